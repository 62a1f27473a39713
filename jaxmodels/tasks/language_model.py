"""Byte-level GPT language modelling: corpus -> windows -> fit -> loss, perplexity, samples.

Reports the validation loss next to the corpus's unigram entropy (the loss of a
model that ignores context), prints samples at every evaluation and at the end,
and tokens/s and MFU in the summary.
"""
import math
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels import models, parallel, report
from jaxmodels import train as train_lib
from jaxmodels.errors import ConfigError
from jaxmodels.tasks import common


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      text_file='',               # A text file or directory; '' = tfds below, else Debian fortunes.
      tfds_name='tiny_shakespeare',
      val_fraction=0.1,           # Of a local text, taken from its end.
      seq_len=128)
  config.model = dict(name='gpt', num_layers=4, num_heads=4, embed_dim=256, mlp_dim=1024,
                      dropout=0.1, positions='rotary', tie_embeddings=True, scan_layers=False,
                      remat=False)
  config.optimizer = dict(name='adamw', learning_rate=1e-3, schedule='warmup_cosine',
                          warmup_steps=100, weight_decay=0.1, momentum=0.9, clip_norm=1.0)
  config.train = dict(batch_size=32, num_steps=3000, num_epochs=0, log_every_steps=50,
                      eval_every_steps=500, eval_batch_size=64, steps_per_dispatch=4,
                      progress=True)
  config.sample = dict(prompt='The ', max_new_tokens=120, temperature=0.8, top_k=40, top_p=0.95,
                       num_samples=2)
  common.add_scale_config(config)
  config.checkpoint.best_metric, config.checkpoint.best_mode = 'loss', 'min'
  return config


_RULES = common.SCALE_RULES + (
    ('optimizer.learning_rate', lambda v: v > 0, 'must be > 0'),
    ('train.batch_size', lambda v: v > 0, 'must be > 0'),
    ('train.num_steps', lambda v: v > 0, 'must be > 0'),
    ('train.steps_per_dispatch', lambda v: v > 0, 'must be > 0'),
    ('train.log_every_steps', lambda v: v > 0, 'must be > 0'),
    ('data.seq_len', lambda v: v > 1, 'must be > 1'),
    ('data.val_fraction', lambda v: 0 < v < 1, 'must be in (0, 1)'),
    ('model.name', lambda v: v == 'gpt', "must be 'gpt'"),
    ('sample.temperature', lambda v: v >= 0, 'must be >= 0'),
)


def lm_loss(logits, batch):
  """Per-token cross-entropy (B, T) of next-byte predictions."""
  return train_lib.softmax_cross_entropy(logits, batch['labels'])


class Sampler(train_lib.Callback):
  """Prints (and logs) continuations of the prompt after every evaluation."""

  def __init__(self, module: models.GPT, config, writer, seed: int):
    self._module, self._cfg, self._writer = module, config.sample, writer
    prompt = data_lib.ByteTokenizer.encode(self._cfg.prompt or '\n')
    self._max_new = min(self._cfg.max_new_tokens, module.max_length - len(prompt))
    if self._max_new <= 0:
      raise ConfigError(f'sample.prompt ({len(prompt)} bytes) leaves no room in data.seq_len='
                        f'{module.max_length}: shorten it')
    self._prompt = np.tile(prompt, (self._cfg.num_samples, 1))
    self._rng = jax.random.PRNGKey(seed)
    self.last = []

  def sample(self, params, step: int) -> list[str]:
    tokens = models.generate(self._module, params, self._prompt, jax.random.fold_in(self._rng, step),
                             max_new_tokens=self._max_new, temperature=self._cfg.temperature,
                             top_k=self._cfg.top_k, top_p=self._cfg.top_p)
    # Printable text only: an untrained model emits control bytes (terminal escapes, NUL).
    self.last = [''.join(c if c.isprintable() or c in '\n\t' else '\ufffd'
                         for c in data_lib.ByteTokenizer.decode(t)) for t in np.asarray(tokens)]
    if parallel.is_main_process():
      for i, text in enumerate(self.last):
        print(f'--- sample {i + 1} at step {step} ---\n{text}\n', flush=True)
      self._writer.write_text(step, 'samples', '\n\n---\n\n'.join(self.last))
    return self.last

  def on_eval_end(self, step, logs, state):
    self.sample(state.params, step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains a byte-level GPT; returns the summary (losses, perplexity, samples, tokens/s)."""
  start = time.perf_counter()
  common.check_rules(config, _RULES)
  mesh = common.begin_run(config, workdir)
  train_text, val_text, source = data_lib.load_corpus(config.data.text_file, config.data.tfds_name,
                                                      config.data.val_fraction)
  train_tokens = data_lib.ByteTokenizer.encode(train_text)
  val_tokens = data_lib.ByteTokenizer.encode(val_text)
  entropy = data_lib.unigram_entropy(train_tokens, data_lib.ByteTokenizer.vocab_size)
  seq_len = config.data.seq_len
  part = lambda a: data_lib.process_block(a, jax.process_index(), jax.process_count())
  train_x, train_y = map(part, data_lib.windows(train_tokens, seq_len))
  val_x, val_y = map(part, data_lib.windows(val_tokens, seq_len))
  print(f'corpus {source}: {len(train_tokens):,} train / {len(val_tokens):,} validation bytes; '
        f'unigram entropy {entropy:.3f} nats/byte', flush=True)

  options = {k: v for k, v in config.model.items() if k != 'name'}
  module = models.GPT(vocab_size=data_lib.ByteTokenizer.vocab_size, max_length=seq_len,
                      dtype=common.compute_dtype(config), **options)
  model = train_lib.linen_model(module)
  tx, schedule = train_lib.optimizer_from_config(config.optimizer, config.train.num_steps)
  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  steps_per_epoch = len(train_x) * jax.process_count() // config.train.batch_size
  checkpointer = common.make_checkpointer(config, workdir, max(steps_per_epoch, 1))
  rules = parallel.logical_rules(module, train_x[:1], models.LOGICAL_AXIS_RULES)
  state, resumed = common.restore_or_create_state(model, tx, init_rng, train_x[:1], config, mesh,
                                                  checkpointer, rules=rules)

  metrics_fn = train_lib.classification_metrics(data_lib.ByteTokenizer.vocab_size, top_k=0)
  train_step = common.make_step(model, lm_loss, tx, metrics_fn, schedule, config, mesh)
  eval_step = train_lib.make_eval_step(model.apply, lm_loss, metrics_fn)
  writer = common.create_writer(workdir)
  sampler = Sampler(module.clone(dropout=0.0), config, writer, config.seed)
  fit = lambda state: train_lib.fit(
      state, train_step, (train_x, train_y), batch_size=config.train.batch_size,
      num_steps=config.train.num_steps, eval_step=eval_step, eval_data=(val_x, val_y),
      eval_every_steps=config.train.eval_every_steps, eval_batch_size=config.train.eval_batch_size,
      log_every_steps=config.train.log_every_steps,
      steps_per_dispatch=config.train.steps_per_dispatch, callbacks=[sampler], writer=writer,
      progress=config.train.progress, data_rng=data_rng, mesh=mesh, checkpointer=checkpointer,
      nan_policy=config.nan.policy)
  # Activations carry logical names too: the rules map them onto this mesh while tracing.
  with jax.set_mesh(mesh), nn.logical_axis_rules(models.LOGICAL_AXIS_RULES):
    try:
      state, history = common.fit_with_rollback(fit, state, config, checkpointer)
    finally:
      checkpointer.close()
    val = train_lib.summarize(train_lib.make_evaluate_fn(eval_step, config.train.eval_batch_size,
                                                         mesh)(state, val_x, val_y))
    samples = sampler.sample(state.params, int(state.step))

  writer.write_scalars(int(state.step), {'val/loss': val['loss'],
                                         'val/perplexity': math.exp(val['loss'])})
  writer.close()
  summary = {
      'corpus': source,
      'model': {k: v for k, v in config.model.items()},
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'steps': int(state.step),
      'resumed': resumed,
      'unigram_entropy': entropy,
      'val_loss': val['loss'],
      'val_perplexity': math.exp(val['loss']),
      'val_accuracy': val['accuracy'],
      **common.throughput_summary(history, config.train.batch_size, unit='sequences',
                                  tokens_per_example=seq_len),
      'wall_seconds': time.perf_counter() - start,
      'samples': '\n---\n'.join(samples),
  }
  if parallel.is_main_process():
    report.plot_history(history, f'{workdir}/training_curves.png')
    print(f'validation loss {val["loss"]:.3f} nats/byte (perplexity {math.exp(val["loss"]):.2f}) '
          f'vs unigram entropy {entropy:.3f}')
    print(report.write_summary(workdir, summary))
  return summary

