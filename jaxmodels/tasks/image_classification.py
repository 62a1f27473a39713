"""Image classification end to end: data -> model -> fit -> test metrics, plots, summary.

`train_and_evaluate(config, workdir)` is what `experiments/{mnist,fashion_mnist,
cifar10}.py` call; it is equally callable from a notebook or a test. The same
config runs on one CPU, a GPU, a TPU or a pod: `config.parallel` picks the mesh
and strategy, `config.precision` the compute dtype.
"""
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxmodels import data as data_lib
from jaxmodels import models, parallel, report
from jaxmodels import train as train_lib
from jaxmodels.errors import ConfigError
from jaxmodels.tasks import common


def default_config() -> ml_collections.ConfigDict:
  """Defaults shared by the image experiments; each experiment overrides some."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      name='mnist',
      source='auto',     # 'auto': local_dir, a prepared tfds copy, autodetected files, download.
      local_dir='',      # Raw files: IDX *-ubyte.gz, CIFAR-10 *.bin, or train.npz/test.npz.
      data_dir='',       # tfds data_dir ('' = tfds default).
      num_train=0,       # > 0: use only the first num_train examples (quick runs).
      num_test=0,
  )
  config.augment = dict(flip=False, crop_padding=0, rotation=0.0, shift=0.0, zoom=0.0)
  config.model = dict(name='small_cnn')  # Other keys are passed to the model's constructor.
  config.optimizer = dict(name='adamw', learning_rate=1e-3, schedule='warmup_cosine',
                          warmup_epochs=1.0, weight_decay=1e-4, momentum=0.9, clip_norm=0.0)
  config.train = dict(batch_size=128, num_epochs=10, num_steps=0, label_smoothing=0.0,
                      log_every_steps=100, eval_every_steps=0, eval_batch_size=1000,
                      steps_per_dispatch=4, progress=True)
  config.early_stopping = dict(patience=0, monitor='accuracy', mode='max')
  config.report = dict(num_prediction_images=25)
  return common.add_scale_config(config)


# (config key, test, requirement) for values that cannot work.
_RULES = common.SCALE_RULES + (
    ('optimizer.learning_rate', lambda v: v > 0, 'must be > 0'),
    ('optimizer.warmup_epochs', lambda v: v >= 0, 'must be >= 0'),
    ('train.batch_size', lambda v: v > 0, 'must be > 0'),
    ('train.num_epochs', lambda v: v >= 0, 'must be >= 0'),
    ('train.num_steps', lambda v: v >= 0, 'must be >= 0'),
    ('train.label_smoothing', lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    ('train.steps_per_dispatch', lambda v: v > 0, 'must be > 0'),
    ('train.log_every_steps', lambda v: v > 0, 'must be > 0'),
    ('train.eval_batch_size', lambda v: v > 0, 'must be > 0'),
    ('model.name', lambda v: v in models.MODELS, f'must be one of {", ".join(sorted(models.MODELS))}'),
    ('early_stopping.mode', lambda v: v in ('min', 'max'), "must be 'min' or 'max'"),
)


def validate_config(config) -> None:
  """Raises ConfigError (one line) for the first value that cannot work."""
  common.check_rules(config, _RULES)
  if not (config.train.num_epochs or config.train.num_steps):
    raise ConfigError('set train.num_epochs or train.num_steps to a positive number')


def build_model(config, num_classes: int):
  """The Linen module named by config.model.name, with the options it accepts."""
  options = {k: v for k, v in config.model.items() if k != 'name'}
  accepted = {f.name for f in dataclasses.fields(models.MODELS[config.model.name])}
  ignored = sorted(set(options) - accepted)
  if ignored:
    logging.warning('model %r ignores options %s', config.model.name, ', '.join(ignored))
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k in accepted}
  return models.create_model(config.model.name, num_classes=num_classes,
                             dtype=common.compute_dtype(config), **options)


def load_data(config) -> data_lib.ImageClassificationData:
  """This process's part of the configured dataset, cut to num_train/num_test if set."""
  dataset = data_lib.load_dataset(config.data.name, source=config.data.source,
                                  local_dir=config.data.local_dir or None,
                                  data_dir=config.data.data_dir or None,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  return data_lib.take_subset(dataset, config.data.num_train or None, config.data.num_test or None)


def make_preprocess(mean, std, augment_config, dtype=jnp.float32):
  """(rng, batch) -> batch: augment the raw 0..255 pixels (zero fill is black), then normalise."""
  augment = data_lib.make_augment(**augment_config)
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def preprocess(rng, batch):
    images = augment(rng, batch['inputs'].astype(jnp.float32))
    return {**batch, 'inputs': data_lib.normalize(images, mean, std).astype(dtype)}

  return preprocess


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates on the test split and writes logs, plots and summary to workdir.

  Returns the summary dict (test metrics, images/s, compile time, ...).
  """
  start = time.perf_counter()
  validate_config(config)
  mesh = common.begin_run(config, workdir)
  dataset = load_data(config)
  logging.info('data: %s, train %s, test %s; mesh %s', dataset.source, dataset.train_images.shape,
               dataset.test_images.shape, dict(mesh.shape))

  model = train_lib.linen_model(build_model(config, dataset.num_classes))
  train_cfg = config.train
  # Every process holds an equal part, so the global epoch is process_count times the local one.
  steps_per_epoch = len(dataset.train_images) * jax.process_count() // train_cfg.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f'train.batch_size={train_cfg.batch_size} is larger than the training set '
                      f'({len(dataset.train_images) * jax.process_count()} examples)')
  total_steps = train_cfg.num_steps or train_cfg.num_epochs * steps_per_epoch
  opt_cfg = config.optimizer.copy_and_resolve_references()
  with opt_cfg.unlocked():
    opt_cfg.warmup_steps = int(opt_cfg.warmup_epochs * steps_per_epoch)
  tx, schedule = train_lib.optimizer_from_config(opt_cfg, total_steps)

  mean, std = data_lib.channel_stats(dataset.train_images)
  dtype = common.compute_dtype(config)
  preprocess = make_preprocess(mean, std, config.augment.to_dict(), dtype)
  normalize_only = make_preprocess(mean, std, {}, dtype)
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  example = normalize_only(None, {'inputs': jnp.asarray(dataset.train_images[:1])})['inputs']
  checkpointer = common.make_checkpointer(config, workdir, steps_per_epoch)
  state, resumed = common.restore_or_create_state(model, tx, init_rng, example, config, mesh,
                                                  checkpointer)

  loss_fn = train_lib.classification_loss(train_cfg.label_smoothing)
  metrics_fn = train_lib.classification_metrics(dataset.num_classes)
  train_step = train_lib.with_preprocess(
      common.make_step(model, loss_fn, tx, metrics_fn, schedule, config, mesh), preprocess)
  base_eval_step = train_lib.make_eval_step(
      model.apply, train_lib.classification_loss(),
      train_lib.classification_metrics(dataset.num_classes, with_confusion=True))
  eval_step = lambda state, batch: base_eval_step(state, normalize_only(None, batch))

  callbacks = []
  if config.early_stopping.patience > 0:
    callbacks.append(train_lib.EarlyStopping(config.early_stopping.monitor,
                                             config.early_stopping.mode,
                                             config.early_stopping.patience))
  earlier = report.read_logged_rows(workdir, int(state.step)) if resumed else None
  writer = common.create_writer(workdir)
  if not resumed:
    writer.write_text(0, 'config', str(config))
  fit = lambda state: train_lib.fit(
      state, train_step, (dataset.train_images, dataset.train_labels),
      batch_size=train_cfg.batch_size, num_steps=total_steps,
      eval_step=eval_step, eval_data=(dataset.test_images, dataset.test_labels),
      eval_every_steps=train_cfg.eval_every_steps or None,
      eval_batch_size=train_cfg.eval_batch_size, log_every_steps=train_cfg.log_every_steps,
      steps_per_dispatch=train_cfg.steps_per_dispatch, callbacks=callbacks, writer=writer,
      progress=train_cfg.progress, data_rng=data_rng, mesh=mesh, checkpointer=checkpointer,
      nan_policy=config.nan.policy)
  try:
    state, history = common.fit_with_rollback(fit, state, config, checkpointer)
  except BaseException:
    writer.close()
    raise
  finally:
    checkpointer.close()
  if earlier is not None:  # The curves show the whole run, not just since the resume.
    history.train[:0], history.eval[:0] = earlier

  test = train_lib.summarize(train_lib.make_evaluate_fn(eval_step, train_cfg.eval_batch_size, mesh)(
      state, dataset.test_images, dataset.test_labels))
  confusion = test.pop('confusion')
  report_text = train_lib.classification_report(confusion, dataset.class_names)
  writer.write_text(int(state.step), 'classification_report', report_text)
  writer.write_scalars(int(state.step), {f'test/{k}': v for k, v in test.items()})
  writer.close()

  scores = train_lib.precision_recall_f1(confusion)
  summary = {
      'dataset': config.data.name,
      'data_source': dataset.source,
      'model': config.model.name,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'mesh': dict(mesh.shape),
      'steps': int(state.step),
      'resumed': resumed,
      'epochs': round(int(state.step) / steps_per_epoch, 3),
      'test': {**test, 'macro_f1': scores['macro_f1'], 'weighted_f1': scores['weighted_f1']},
      **common.throughput_summary(history, train_cfg.batch_size, unit='images'),
      'wall_seconds': time.perf_counter() - start,
      'classification_report': report_text,
  }
  local_state = _on_this_host(state)  # A collective: every process takes part.
  if parallel.is_main_process():
    _write_plots(workdir, config, dataset, model, local_state, history, confusion, normalize_only)
    print(report.write_summary(workdir, summary))
  return summary


def _on_this_host(tree):
  """Whole numpy copies of (possibly sharded, multi-process) arrays, for host-side use."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if x.is_fully_replicated
                      else multihost_utils.process_allgather(x, tiled=True), tree)


def _write_plots(workdir, config, dataset, model, state, history, confusion, normalize_only):
  """Curves, confusion matrix, and a grid of this process's first test images."""
  num = config.report.num_prediction_images
  images = dataset.test_images[:num]
  predict = jax.jit(train_lib.make_predict_fn(model.apply))
  logits = predict(state, normalize_only(None, {'inputs': jnp.asarray(images)})['inputs'])
  report.plot_history(history, os.path.join(workdir, 'training_curves.png'))
  report.plot_confusion_matrix(confusion, dataset.class_names,
                               os.path.join(workdir, 'confusion_matrix.png'))
  report.plot_predictions(images, dataset.test_labels[:num], np.asarray(jnp.argmax(logits, -1)),
                          dataset.class_names, os.path.join(workdir, 'predictions.png'))
