"""What every task shares: scale-out config, validation, sharded state, the strategy's
train step, and a workdir that only process 0 writes to."""
import os

import jax
import jax.numpy as jnp
import ml_collections

from jaxmodels import parallel, report
from jaxmodels import train as train_lib
from jaxmodels.errors import ConfigError

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
  return config


SCALE_RULES = (
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


def create_state(model: train_lib.Model, tx, rng, example_inputs, config, mesh):
  """TrainState created directly in its shards (FSDP rules when the mesh has 'fsdp' > 1)."""
  init = lambda r: train_lib.create_train_state(model, tx, r, example_inputs)
  state, _ = parallel.create_sharded_state(init, rng, mesh,
                                           fsdp_min_size=config.parallel.fsdp_min_size)
  return state


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
