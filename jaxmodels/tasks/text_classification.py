"""Text classification: texts -> cleaning -> word ids -> LSTM or BERT-style encoder ->
test metrics, classification report, confusion matrix, summary.

Data: tfds `imdb_reviews` where there is a network, or a local labelled set: one text
file per class (fortune files, '%'-separated, or one example per line), by default
Debian's fortunes categories when that package is installed.
"""
import os
import time

import jax
import ml_collections
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels import models, parallel, report
from jaxmodels import train as train_lib
from jaxmodels.errors import ConfigError, DataError, DataUnavailableError
from jaxmodels.tasks import common

MODEL_NAMES = ('lstm', 'bert')


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      source='auto',          # 'auto': local_dir, else tfds, else Debian fortunes; 'tfds'; 'local'.
      tfds_name='imdb_reviews',
      local_dir='',           # One text file per class.
      categories=('computers', 'politics', 'science', 'literature', 'law', 'food'),  # Local files.
      test_fraction=0.2,      # Local sets have no test split: a seeded share is held out.
      max_length=128,         # Tokens per example, [CLS] included.
      vocab_size=20_000,
      min_count=2)
  config.model = dict(name='lstm', embed_dim=128, hidden=128, bidirectional=True, num_layers=2,
                      num_heads=4, mlp_dim=256, dropout=0.3)
  config.optimizer = dict(name='adamw', learning_rate=2e-3, schedule='warmup_cosine',
                          warmup_epochs=0.5, weight_decay=1e-2, momentum=0.9, clip_norm=1.0)
  config.train = dict(batch_size=64, num_epochs=8, num_steps=0, label_smoothing=0.0,
                      log_every_steps=50, eval_every_steps=0, eval_batch_size=256,
                      steps_per_dispatch=1, progress=True)
  common.add_scale_config(config)
  return config


_RULES = common.SCALE_RULES + (
    ('model.name', lambda v: v in MODEL_NAMES, f'must be one of {", ".join(MODEL_NAMES)}'),
    ('optimizer.learning_rate', lambda v: v > 0, 'must be > 0'),
    ('train.batch_size', lambda v: v > 0, 'must be > 0'),
    ('data.max_length', lambda v: v > 1, 'must be > 1'),
    ('data.source', lambda v: v in ('auto', 'tfds', 'local'), "must be 'auto', 'tfds' or 'local'"),
    ('data.test_fraction', lambda v: 0 < v < 1, 'must be in (0, 1)'),
)


def load_texts(config):
  """(train texts, train labels, test texts, test labels, class names, source)."""
  cfg = config.data
  local_dir = cfg.local_dir
  if cfg.source != 'tfds' and not local_dir:
    try:
      if cfg.source == 'auto':
        return _tfds_texts(cfg.tfds_name)
    except DataUnavailableError:
      pass
    local_dir = data_lib.text.FORTUNES_DIR
    if not os.path.isdir(local_dir):
      raise DataUnavailableError(
          f'no network for tfds {cfg.tfds_name!r} and no local texts: pass '
          '--config.data.local_dir=DIR with one text file per class (or apt-get install fortunes)')
  elif cfg.source == 'tfds':
    return _tfds_texts(cfg.tfds_name)
  texts, labels, names = data_lib.load_labelled_texts(local_dir, cfg.categories or None)
  return (*data_lib.split_examples(texts, labels, cfg.test_fraction, config.seed), names,
          f'local:{local_dir}')


def _tfds_texts(name):
  tfds, builder = data_lib.tfds_source.prepared_builder(name)
  features = builder.info.features
  if 'text' not in features or 'label' not in features:
    raise DataError(f"tfds dataset {name!r} has no 'text' and 'label' features")

  def read(split):
    texts, labels = [], []
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      texts.append(example['text'].decode('utf-8', errors='replace'))
      labels.append(int(example['label']))
    return texts, np.asarray(labels, np.int32)

  num_classes = features['label'].num_classes
  names = tuple(features['label'].names) if hasattr(features['label'], 'names') else tuple(
      str(i) for i in range(num_classes))
  return (*read('train'), *read('test'), names, f'tfds:{name}')


def build_model(config, vocab_size: int, num_classes: int):
  cfg, dtype = config.model, common.compute_dtype(config)
  if cfg.name == 'lstm':
    return models.LSTMClassifier(vocab_size, num_classes, cfg.embed_dim, cfg.hidden,
                                 cfg.bidirectional, cfg.dropout, dtype=dtype)
  return models.TransformerClassifier(
      vocab_size, num_classes, cfg.num_layers, cfg.num_heads, cfg.embed_dim, cfg.mlp_dim,
      config.data.max_length, cfg.dropout, dtype=dtype)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains a text classifier; returns the summary with test metrics and the report."""
  start = time.perf_counter()
  common.check_rules(config, _RULES)
  mesh = common.begin_run(config, workdir)
  train_texts, train_labels, test_texts, test_labels, names, source = load_texts(config)
  train_texts = [data_lib.clean_text(t) for t in train_texts]
  test_texts = [data_lib.clean_text(t) for t in test_texts]
  vocab = data_lib.WordVocabulary(train_texts, config.data.vocab_size, config.data.min_count)
  length = config.data.max_length
  train_x, test_x = vocab.encode(train_texts, length), vocab.encode(test_texts, length)
  print(f'texts {source}: {len(train_x)} train / {len(test_x)} test, {len(names)} classes, '
        f'vocabulary {vocab.size}', flush=True)
  part = lambda a: data_lib.process_block(a, jax.process_index(), jax.process_count())
  train_x, train_y, test_x, test_y = (part(a) for a in (train_x, train_labels, test_x, test_labels))

  module = build_model(config, vocab.size, len(names))
  model = train_lib.linen_model(module)
  train_cfg = config.train
  steps_per_epoch = len(train_x) * jax.process_count() // train_cfg.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f'train.batch_size={train_cfg.batch_size} exceeds the {len(train_x)} '
                      'training texts')
  total_steps = train_cfg.num_steps or train_cfg.num_epochs * steps_per_epoch
  opt_cfg = config.optimizer.copy_and_resolve_references()
  with opt_cfg.unlocked():
    opt_cfg.warmup_steps = int(opt_cfg.warmup_epochs * steps_per_epoch)
  tx, schedule = train_lib.optimizer_from_config(opt_cfg, total_steps)
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  checkpointer = common.make_checkpointer(config, workdir, steps_per_epoch)
  rules = parallel.logical_rules(module, train_x[:1], models.LOGICAL_AXIS_RULES)
  state, resumed = common.restore_or_create_state(model, tx, init_rng, train_x[:1], config, mesh,
                                                  checkpointer, rules=rules)

  num_classes = len(names)
  loss_fn = train_lib.classification_loss(train_cfg.label_smoothing)
  train_step = common.make_step(model, loss_fn, tx,
                                train_lib.classification_metrics(num_classes, top_k=0),
                                schedule, config, mesh)
  eval_step = train_lib.make_eval_step(
      model.apply, train_lib.classification_loss(),
      train_lib.classification_metrics(num_classes, top_k=0, with_confusion=True))
  writer = common.create_writer(workdir)
  fit = lambda state: train_lib.fit(
      state, train_step, (train_x, train_y), batch_size=train_cfg.batch_size,
      num_steps=total_steps, eval_step=eval_step, eval_data=(test_x, test_y),
      eval_every_steps=train_cfg.eval_every_steps or None,
      eval_batch_size=train_cfg.eval_batch_size, log_every_steps=train_cfg.log_every_steps,
      steps_per_dispatch=train_cfg.steps_per_dispatch, writer=writer,
      progress=train_cfg.progress, data_rng=data_rng, mesh=mesh, checkpointer=checkpointer,
      nan_policy=config.nan.policy)
  try:
    state, history = common.fit_with_rollback(fit, state, config, checkpointer)
  finally:
    checkpointer.close()

  test = train_lib.summarize(train_lib.make_evaluate_fn(eval_step, train_cfg.eval_batch_size, mesh)(
      state, test_x, test_y))
  confusion = test.pop('confusion')
  report_text = train_lib.classification_report(confusion, names)
  writer.write_text(int(state.step), 'classification_report', report_text)
  writer.write_scalars(int(state.step), {f'test/{k}': v for k, v in test.items()})
  writer.close()
  scores = train_lib.precision_recall_f1(confusion)
  summary = {
      'data_source': source,
      'classes': ', '.join(names),
      'model': config.model.name,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'steps': int(state.step),
      'resumed': resumed,
      'test': {**test, 'macro_f1': scores['macro_f1'], 'weighted_f1': scores['weighted_f1']},
      **common.throughput_summary(history, train_cfg.batch_size, unit='examples',
                                  tokens_per_example=length),
      'wall_seconds': time.perf_counter() - start,
      'classification_report': report_text,
  }
  if parallel.is_main_process():
    report.plot_history(history, os.path.join(workdir, 'training_curves.png'))
    report.plot_confusion_matrix(confusion, names, os.path.join(workdir, 'confusion_matrix.png'))
    print(report.write_summary(workdir, summary))
  return summary
