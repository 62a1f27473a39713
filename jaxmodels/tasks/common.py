"""What every task shares: scale-out config, validation, sharded state, the strategy's
train step, and a workdir that only process 0 writes to."""
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from jaxmodels import parallel, report
from jaxmodels import train as train_lib
from jaxmodels.checkpoint import Checkpointer, checkpoint_dir, restore_or_init
from jaxmodels.errors import CheckpointError, ConfigError, NonFiniteError

STRATEGIES = ('jit', 'shard_map')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def add_scale_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the mesh, strategy, precision and accumulation fields (same for every task)."""
  config.parallel = dict(
      mesh=dict(data=-1, fsdp=1, model=1),  # -1: all remaining devices.
      strategy='jit',         # 'jit': GSPMD from shardings; 'shard_map': per-device step + pmean.
      fsdp_min_size=2**14,    # Leaves smaller than this (elements) stay replicated under FSDP.
  )
  config.precision = dict(compute_dtype='float32')  # 'bfloat16': bf16 compute, f32 params/optimiser.
  config.train.micro_batches = 1  # Gradient accumulation: slices of each batch, one update.
  config.checkpoint = dict(
      every_steps=0,        # 0: once per epoch.
      every_minutes=10.0,   # Also save when this long has passed (0: off).
      keep_last=3, keep_best=1, best_metric='accuracy', best_mode='max', async_save=True)
  config.resume = 'auto'    # 'auto': continue from workdir's checkpoints if the config matches; 'force'.
  config.init_from = ''     # A workdir (or its checkpoints/) whose params start this run (fine-tuning).
  config.nan = dict(policy='stop', max_rollbacks=3, lr_factor=0.5)  # policy: stop, skip, rollback.
  return config


SCALE_RULES = (
    ('resume', lambda v: v in ('auto', 'force'), "must be 'auto' or 'force'"),
    ('nan.policy', lambda v: v in train_lib.NAN_POLICIES,
     f'must be one of {", ".join(train_lib.NAN_POLICIES)}'),
    ('nan.lr_factor', lambda v: 0 < v < 1, 'must be in (0, 1)'),
    ('checkpoint.keep_last', lambda v: v >= 1, 'must be >= 1'),
    ('checkpoint.best_mode', lambda v: v in ('min', 'max'), "must be 'min' or 'max'"),
    ('parallel.strategy', lambda v: v in STRATEGIES, f'must be one of {", ".join(STRATEGIES)}'),
    ('precision.compute_dtype', lambda v: v in COMPUTE_DTYPES,
     f'must be one of {", ".join(COMPUTE_DTYPES)}'),
    ('train.micro_batches', lambda v: v > 0, 'must be > 0'),
)


def check_rules(config, rules) -> None:
  """Raises ConfigError (one line) for the first (key, test, requirement) that fails."""
  for key, ok, requirement in rules:
    value = config
    for part in key.split('.'):
      value = value[part]
    if not ok(value):
      raise ConfigError(f'{key} {requirement}, got {value!r}')
  if config.train.batch_size % config.train.micro_batches:
    raise ConfigError(f'train.batch_size={config.train.batch_size} must be a multiple of '
                      f'train.micro_batches={config.train.micro_batches}')


def compute_dtype(config):
  return COMPUTE_DTYPES[config.precision.compute_dtype]


def make_mesh(config):
  return parallel.make_mesh(config.parallel.mesh.to_dict())


def make_step(model: train_lib.Model, loss_fn, tx, metrics_fn, schedule, config, mesh):
  """The pure train step for `fit`, per config.parallel.strategy and train.micro_batches."""
  kwargs = dict(micro_batches=config.train.micro_batches)
  if config.parallel.strategy == 'shard_map':
    if mesh.shape['fsdp'] > 1 or mesh.shape['model'] > 1:
      raise ConfigError("parallel.strategy='shard_map' replicates params: set "
                        'parallel.mesh.fsdp=1 and parallel.mesh.model=1, or use strategy=jit')
    body = train_lib.make_train_step(model.apply, loss_fn, tx, metrics_fn, schedule,
                                     axis_name=parallel.BATCH_AXES, **kwargs)
    return parallel.per_device_step(body, mesh)
  return train_lib.make_train_step(model.apply, loss_fn, tx, metrics_fn, schedule, **kwargs)


def begin_run(config, workdir: str):
  """What every task does first, after validating its config: checks that all processes
  share the config, prepares the workdir and returns the mesh."""
  parallel.assert_same_config(config)
  prepare_workdir(workdir)
  return make_mesh(config)


def prepare_workdir(workdir: str) -> None:
  """Creates workdir; a ConfigError (one line) if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'cannot write to workdir {workdir!r} ({e.strerror}); '
                      'pass --workdir=<a writable directory>') from None


def create_writer(workdir: str):
  """TensorBoard + JSONL on process 0; a writer that does nothing on the others."""
  return report.create_writer(workdir, enabled=parallel.is_main_process())


def make_checkpointer(config, workdir: str, steps_per_epoch: int) -> Checkpointer:
  cfg = config.checkpoint
  return Checkpointer(checkpoint_dir(workdir), config=config.to_dict(),
                      save_every_steps=cfg.every_steps or steps_per_epoch,
                      save_every_seconds=cfg.every_minutes * 60, keep_last=cfg.keep_last,
                      keep_best=cfg.keep_best, best_metric=cfg.best_metric,
                      best_mode=cfg.best_mode, async_save=cfg.async_save, resume=config.resume)


def restore_or_create_state(model: train_lib.Model, tx, rng, example_inputs, config, mesh,
                            checkpointer: Checkpointer, rules=()):
  """(state, resumed): the workdir's newest checkpoint on this mesh, else a fresh sharded
  state, with params from config.init_from when set. rules: sharding rules that come
  before FSDP (e.g. `parallel.logical_rules` of a Transformer)."""
  init = lambda r: train_lib.create_train_state(model, tx, r, example_inputs)
  try:
    abstract = jax.eval_shape(init, rng)
  except Exception as e:  # E.g. too many pooling stages for the image size.
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
    raise ConfigError(f'cannot build the model for inputs of shape {tuple(example_inputs.shape)} '
                      f'({type(e).__name__}: {detail}); check the model.* settings') from e
  shardings = parallel.sharding_rules(abstract, mesh, rules,
                                      fsdp_min_size=config.parallel.fsdp_min_size)
  state, meta = restore_or_init(checkpointer, init, rng, shardings)
  if meta is not None:
    logging.info('resumed from %s at step %d', checkpointer.directory, int(state.step))
    return state, True
  if config.init_from:
    source = config.init_from
    if os.path.isdir(checkpoint_dir(source)):
      source = checkpoint_dir(source)
    if not os.path.isdir(source):
      raise CheckpointError(f'init_from={config.init_from!r} is not a directory of checkpoints')
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract.params, shardings.params)
    state = state.replace(params=Checkpointer(source).restore_params(abstract))
    logging.info('params initialised from %s', source)
  return state, False


def fit_with_rollback(fit_fn: Callable, state, config, checkpointer: Checkpointer):
  """Runs `fit_fn(state) -> (state, history)`. With nan.policy='rollback', a NonFiniteError
  restores the last good checkpoint, multiplies the learning rate by nan.lr_factor and
  continues, at most nan.max_rollbacks times."""
  rollbacks = 0
  while True:
    try:
      return fit_fn(state)
    except NonFiniteError as error:
      if config.nan.policy != 'rollback' or rollbacks >= config.nan.max_rollbacks:
        raise
      checkpointer.wait()
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              state)
      restored = checkpointer.restore(abstract) if checkpointer.steps else None
      if restored is None:
        raise NonFiniteError(f'{error} (no checkpoint to roll back to yet)', error.step) from None
      state = restored[0]
      multiplier = train_lib.lr_multiplier(state.opt_state) * config.nan.lr_factor
      state = state.replace(opt_state=train_lib.set_lr_multiplier(state.opt_state, multiplier))
      rollbacks += 1
      message = (f'{error}; rolled back to step {int(state.step)} with the learning rate '
                 f'x{multiplier:g} (rollback {rollbacks} of {config.nan.max_rollbacks})')
      logging.warning(message)
      if parallel.is_main_process():
        print(f'warning: {message}')


def throughput_summary(history: train_lib.History, batch_size: int, unit: str = 'examples',
                       tokens_per_example: int | None = None) -> dict:
  """'<unit>_per_sec' (and tokens/s), compile time, and FLOPs / MFU from the compiled step."""
  steps_per_sec = history.examples_per_sec / batch_size
  out = {f'{unit}_per_sec': history.examples_per_sec}
  if tokens_per_example:
    out['tokens_per_sec'] = history.examples_per_sec * tokens_per_example
  out.update(report.utilisation(history.flops_per_step, steps_per_sec))
  out.update(compile_seconds=history.compile_seconds, train_seconds=history.train_seconds)
  return out
