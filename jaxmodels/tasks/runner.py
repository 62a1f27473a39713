"""One run, for every task, read top to bottom in `run`:

    check the config -> mesh -> data -> durations -> model -> optimiser -> checkpointer
    -> restore or create the state -> steps -> fit -> test -> report

A task (`spec.Task`) supplies its data, model arguments, loss, metrics and report. The
extensions the caller passes (`runs.Extension`s; the command line passes its default list)
may change the input spec, the model, the optimiser and a fresh state, and add callbacks
and report entries; `run` names each place where they act. Nothing here is task-specific."""
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels import parallel, report
from jaxmodels import train as train_lib
from jaxmodels.checkpoint import Checkpoint, Checkpointer, checkpoint_dir, restore_or_init
from jaxmodels.errors import ConfigError
from jaxmodels.runs import RunContext, build_model, chain, write_card
from jaxmodels.schema import Schema, steps_of
from jaxmodels.tasks.run_config import RUN_SCHEMA
from jaxmodels.tasks.spec import Task
from jaxmodels.train import cpu_path


def schema_of(task: Task, extensions=()) -> Schema:
  """Every config field of a run of `task` with `extensions`: the common ones, the
  extensions' and the task's, with the task's defaults."""
  return (RUN_SCHEMA + chain(*extensions).schema + task.schema).with_defaults(task.defaults)


def default_config(task: Task, extensions=()):
  return schema_of(task, extensions).default_config()


def validate(task: Task, config, extensions=()) -> None:
  """ConfigError (one line, naming the key) for the first value that cannot work."""
  schema_of(task, extensions).validate(config)
  if config.model.name not in task.model_names:
    raise ConfigError(f'model.name must be one of {", ".join(task.model_names)} for '
                      f'{task.name}, got {config.model.name!r}', key='model.name')
  if not (config.train.num_epochs or config.train.num_steps):
    raise ConfigError('set train.num_epochs or train.num_steps to a positive number',
                      key='train.num_epochs')
  if config.train.micro_batches and config.train.batch_size % config.train.micro_batches:
    raise ConfigError(f'train.batch_size={config.train.batch_size} must be a multiple of '
                      f'train.micro_batches={config.train.micro_batches}', key='train.batch_size')
  if config.early_stopping.patience and not config.data.val_fraction:
    raise ConfigError('early stopping needs a validation split: set data.val_fraction > 0',
                      key='data.val_fraction')


def run(task: Task, config, workdir: str, *, extensions=(), overrides: dict | None = None,
        callbacks=()) -> dict:
  """Trains, evaluates the test split once at the end, and writes logs, plots, model.json and
  the summary to workdir. Returns the summary. A run in the same workdir resumes.

  extensions: `runs.Extension`s applied in order (their config fields must be in `config`:
  build it with `default_config(task, extensions)`). overrides: the config changes this
  run was asked for, recorded in the summary. callbacks: more `fit` callbacks."""
  start = time.perf_counter()
  extension = chain(*extensions)
  validate(task, config, extensions)
  parallel.assert_same_config(config)
  report.prepare_workdir(workdir)
  mesh = parallel.make_mesh(config.parallel.mesh.to_dict())

  # Data: the same splits on every process, each laid out over the mesh's batch axes.
  data = task.load_data(config).limited(config)
  place = lambda split: data_lib.shard_examples(
      mesh, parallel.batch_axes(mesh), {'inputs': split[0], 'labels': split[1]},
      global_arrays=True)
  train_split = place(data.train)
  val_split = place(data.val) if data.val is not None else None
  steps_per_epoch = _steps_per_epoch(train_split, config.train.batch_size)
  total_steps = steps_of(config.train, steps_per_epoch, 'num')

  # The model and the optimiser, as the extensions change them.
  arguments = task.model_arguments(config, data)
  module = extension.model(config, build_model(config, arguments))
  model = train_lib.linen_model(module)
  tx, schedule = train_lib.optimizer_from_config(
      config.optimizer, total_steps, steps_of(config.optimizer, steps_per_epoch, 'warmup'))
  tx = extension.optimizer(config, tx, steps_per_epoch)

  ctx = RunContext(config, workdir, data, module, model, None, mesh, parallel.is_main_process())
  if data.description:
    ctx.say(data.description)
  sizes = {name: len(split[0]) if split is not None else 0 for name, split in
           (('train', data.train), ('validation', data.val), ('test', data.test))}
  ctx.say(f'data {data.source}: {sizes}; mesh {dict(mesh.shape)}')
  # The extensions may keep another run's normalisation (init_from: the weights expect it).
  ctx.input_spec = extension.inputs(config, task.inputs(config, data))
  to_model = lambda batch: {**batch, 'inputs': data_lib.to_model_inputs(ctx.input_spec,
                                                                        batch['inputs'])}
  example = to_model({'inputs': data.train[0][:1]})['inputs']
  checkpointer = _checkpointer(config, workdir, schema_of(task, extensions), steps_per_epoch,
                               keep_best=val_split is not None)

  # Models with logical axis names (the Transformers) get their sharding from them.
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_AXIS_RULES):
    try:
      state, meta = restore_or_create(module, model, tx, config, mesh, example, checkpointer)
      if meta is None:  # A fresh state: the extensions may start it elsewhere (init_from).
        state = extension.initialize(config, module, state)
      train_step = make_train_step(model, task.loss(config), tx, task.metrics(data, False),
                                   schedule, config, mesh)
      augment = task.augment(config)
      if augment is not None:  # On the stored inputs (pixels 0..255: zero fill is black).
        train_step = train_lib.with_preprocess(train_step, lambda rng, batch: to_model(
            {**batch, 'inputs': augment(rng, batch['inputs'].astype(jnp.float32))}))
      eval_step = _on_model_inputs(train_lib.make_eval_step(
          model.apply, task.loss(config), task.metrics(data, False)), to_model)
      test_step = _on_model_inputs(train_lib.make_eval_step(
          model.apply, task.loss(config), task.metrics(data, True)), to_model)

      with report.create_writer(workdir, enabled=ctx.is_main) as ctx.writer:
        fit_callbacks = [*task.callbacks(ctx), *extension.callbacks(ctx), *callbacks]
        state, history, stopped = _fit(ctx, state, meta, train_step, eval_step, train_split,
                                       val_split, total_steps, checkpointer, fit_callbacks)
        test = train_lib.summarize(train_lib.Evaluator(
            test_step, place(data.test), config.train.eval_batch_size)(state))
        ctx.state, ctx.history = state, history
        extra = {**task.report(ctx, test), **extension.report(ctx, test)}
        model_card = extra.pop('model_card', {})  # Extensions' notes for model.json's model.
        ctx.writer.write_scalars(int(state.step), {f'test/{k}': v for k, v in test.items()
                                                  if np.ndim(v) == 0})
    finally:
      checkpointer.close()

  summary = {
      'task': task.name, 'overrides': dict(overrides or {}), 'dataset': data.dataset,
      'data_source': data.source, 'examples': sizes, 'model': config.model.name,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'processes': jax.process_count(), 'mesh': dict(mesh.shape),
      'steps': int(state.step), 'epochs': round(int(state.step) / steps_per_epoch, 3),
      'resumed': meta is not None, 'stopped_early': stopped,
      'validation': history.eval[-1] if history.eval else None,
      'test': {**{k: v for k, v in test.items() if np.ndim(v) == 0}, **extra.pop('test', {})},
      **report.throughput_summary(history, config.train.batch_size, data.tokens_per_example),
      'wall_seconds': time.perf_counter() - start, **extra}
  if ctx.is_main:
    report.plot_history(history, os.path.join(workdir, 'training_curves.png'))
    write_card(workdir, {'task': task.name, 'dataset': data.dataset, 'step': int(state.step),
                         'model': {'name': config.model.name, 'arguments': arguments,
                                   **model_card},
                         'inputs': ctx.input_spec, 'test': summary['test'],
                         'class_names': list(data.info.get('class_names', [])) or None})
    print(report.write_summary(workdir, summary), flush=True)
  return summary


def make_train_step(model, loss_fn, tx, metrics_fn, schedule, config, mesh):
  """The pure train step, per parallel.strategy, train.micro_batches and nan.policy."""
  kwargs = dict(micro_batches=config.train.micro_batches or None)
  if config.parallel.strategy == 'shard_map':
    if mesh.shape['fsdp'] > 1 or mesh.shape['model'] > 1:
      raise ConfigError("parallel.strategy='shard_map' replicates params: set parallel.mesh.fsdp"
                        ' and parallel.mesh.model to 1, or use strategy jit',
                        key='parallel.strategy')
    per_device = train_lib.make_train_step(
        model.apply, loss_fn, tx, metrics_fn, schedule, axis_name=parallel.batch_axes(mesh),
        **kwargs)
    # fit cannot see into a shard_map: the CPU path is applied to the step inside it here.
    step = parallel.per_device_step(cpu_path.tuned(per_device, mesh), mesh)
  else:
    step = train_lib.make_train_step(model.apply, loss_fn, tx, metrics_fn, schedule, **kwargs)
  return train_lib.skip_nonfinite(step) if config.nan.policy == 'skip' else step


def _steps_per_epoch(train_split, batch_size: int) -> int:
  try:
    return train_split.steps_per_epoch(batch_size)
  except data_lib.DataError as e:  # The batch size does not fit the data or the mesh.
    raise ConfigError(str(e), key='train.batch_size') from None


def _checkpointer(config, workdir, schema, steps_per_epoch, keep_best: bool) -> Checkpointer:
  cfg = config.checkpoint
  return Checkpointer(
      checkpoint_dir(workdir), config=config.to_dict(), resumable=schema.resumable,
      save_every_steps=cfg.every_steps or steps_per_epoch,
      save_every_seconds=cfg.every_minutes * 60, keep_last=cfg.keep_last,
      keep_best=cfg.keep_best if keep_best else 0, best_metric=cfg.best_metric,
      best_mode=cfg.best_mode, async_save=cfg.async_save, resume=config.resume)


def restore_or_create(module, model, tx, config, mesh, example, checkpointer):
  """(state, meta) from `checkpoint.restore_or_init`, sharded by the model's logical axis
  names and parallel.fsdp_min_size; a model that cannot take `example` is a ConfigError."""
  init = lambda rng: train_lib.create_train_state(model, tx, rng, example)
  rng = jax.random.PRNGKey(config.seed)
  try:
    abstract = jax.eval_shape(init, rng)
  except Exception as e:  # E.g. too many pooling stages for the image size.
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
    raise ConfigError(f'cannot build the model for inputs of shape {tuple(example.shape)} '
                      f'({type(e).__name__}: {detail}); check the model.* options',
                      key='model.name') from e
  shardings = parallel.sharding_rules(abstract, mesh, parallel.logical_rules(module, example),
                                      fsdp_min_size=config.parallel.fsdp_min_size)
  return restore_or_init(checkpointer, init, rng, shardings)


def _on_model_inputs(eval_step, to_model):
  return lambda state, batch: eval_step(state, to_model(batch))


def _fit(ctx, state, meta, train_step, eval_step, train_split, val_split, total_steps,
         checkpointer, more_callbacks):
  """(state, history, stopped early): fit with this run's callbacks and NaN policy; a run that
  stopped early before is not trained on, and ends at its best checkpoint."""
  config, train_cfg = ctx.config, ctx.config.train
  earlier = report.read_logged_rows(ctx.workdir, int(state.step)) if meta else ([], [])
  stopped = bool(meta and meta.get('stopped_early'))
  callbacks = [train_lib.TerminateOnNaN(), Checkpoint(checkpointer),
               train_lib.LogWriter(ctx.writer, ctx.data.tokens_per_example), *more_callbacks]
  if val_split is not None:
    callbacks.append(train_lib.Evaluate(eval_step, val_split, every_steps=train_cfg.eval_every_steps,
                                        batch_size=train_cfg.eval_batch_size))
  if config.early_stopping.patience:
    callbacks.append(train_lib.EarlyStopping(
        config.checkpoint.best_metric, config.checkpoint.best_mode,
        config.early_stopping.patience, config.early_stopping.min_delta, restore_best=False))
  fit = lambda state: train_lib.fit(
      state, train_step, train_split, batch_size=train_cfg.batch_size,
      num_steps=int(state.step) if stopped else total_steps, callbacks=callbacks, mesh=ctx.mesh,
      data_rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
      steps_per_dispatch=train_cfg.steps_per_dispatch or None,
      log_every_steps=train_cfg.log_every_steps,
      progress=train_cfg.progress)
  if config.nan.policy == 'rollback':
    state, history = train_lib.fit_with_rollback(
        fit, state, checkpointer, lr_factor=config.nan.lr_factor,
        max_rollbacks=config.nan.max_rollbacks, announce=ctx.say)
  else:
    state, history = fit(state)
  history.train[:0], history.eval[:0] = earlier  # The curves show the whole run.
  stopped = stopped or any(cb.stop_training for cb in callbacks)
  if stopped and checkpointer.best_step() is not None:
    checkpointer.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    state = checkpointer.restore(abstract, checkpointer.best_step())[0]
    ctx.say(f'stopped early; the result is the best checkpoint, step {int(state.step)}')
  return state, history, stopped
