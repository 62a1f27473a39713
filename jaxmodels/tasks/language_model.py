"""Byte-level GPT language modelling: a corpus -> windows -> GPT -> validation and test loss
and perplexity next to the corpus's unigram entropy (the loss of a model that ignores
context), with samples at every evaluation and at the end."""
import math

from jaxmodels import data as data_lib
from jaxmodels import train as train_lib
from jaxmodels.schema import Field, Schema, at_least
from jaxmodels.tasks.lm_sampler import Sampler
from jaxmodels.tasks.spec import Task, TaskData

SCHEMA = Schema({
    'data.text_file': Field('', 'A text file to train on.', resumable=True),
    'data.text_dir': Field('', 'A directory of text files to train on.', resumable=True),
    'data.tfds_name': Field('tiny_shakespeare', 'tfds corpus when no local text is given '
                            "(offline: Debian's fortunes)."),
    'data.seq_len': Field(128, 'Tokens (bytes) per training window.', **at_least(2)),
    'sample.prompt': Field('The ', 'Prompt of the samples.', resumable=True),
    'sample.max_new_tokens': Field(120, 'Bytes per sample.', resumable=True, **at_least(1)),
    'sample.temperature': Field(0.8, '0: greedy.', resumable=True, **at_least(0)),
    'sample.top_k': Field(40, 'Sample among the k most likely (0: all).', resumable=True),
    'sample.top_p': Field(0.95, 'Nucleus sampling threshold.', resumable=True),
    'sample.num_samples': Field(2, 'Samples per evaluation.', resumable=True, **at_least(1)),
})


def load_data(config) -> TaskData:
  cfg = config.data
  try:
    train, val, test, source = data_lib.load_corpus(cfg.text_file, cfg.text_dir, cfg.tfds_name,
                                                    holdout=config.data.val_fraction or 0.05)
  except data_lib.DataError as e:
    e.key = e.key or ('data.text_dir' if cfg.text_dir else 'data.text_file')
    raise
  tokens = [data_lib.ByteTokenizer.encode(text) for text in (train, val, test)]
  entropy = data_lib.unigram_entropy(tokens[0], data_lib.ByteTokenizer.vocab_size)
  train, val, test = (data_lib.windows(t, cfg.seq_len) for t in tokens)
  return TaskData(train, test, source, source, val=val, info={'unigram_entropy': entropy},
                  description=f'corpus {source}: {len(tokens[0]):,} train / {len(tokens[1]):,} '
                  f'validation / {len(tokens[2]):,} test bytes; unigram entropy {entropy:.3f} '
                  'nats/byte', tokens_per_example=cfg.seq_len)


def lm_loss(logits, batch):
  """Per-token cross-entropy (B, T) of next-byte predictions."""
  return train_lib.softmax_cross_entropy(logits, batch['labels'])


def sampler(ctx):
  return [Sampler(ctx.module.clone(dropout=0.0), ctx.config, ctx.writer, ctx.say)]


def report(ctx, test: dict) -> dict:
  entropy = ctx.data.info['unigram_entropy']
  ctx.say(f'test loss {test["loss"]:.3f} nats/byte (perplexity {math.exp(test["loss"]):.2f}) vs '
          f'unigram entropy {entropy:.3f}')
  samples = sampler(ctx)[0].sample(ctx.state.params, int(ctx.state.step))
  return {'test': {'perplexity': math.exp(test['loss'])}, 'unigram_entropy': entropy,
          'samples': '\n---\n'.join(samples)}


TASK = Task('language_model', SCHEMA, ('gpt',), load_data,
            model_kwargs=lambda config, data: {'vocab_size': data_lib.ByteTokenizer.vocab_size,
                                               'max_length': config.data.seq_len},
            loss=lambda config: lm_loss,
            metrics=lambda data, for_eval: train_lib.classification_metrics(256, top_k=0),
            report=report, callbacks=sampler,
            inputs=lambda config, data: {'kind': 'bytes', 'seq_len': config.data.seq_len},
            defaults={'model.name': 'gpt', 'train.num_steps': 3000, 'train.batch_size': 32,
                      'train.log_every_steps': 50, 'train.eval_every_steps': 500,
                      'train.eval_batch_size': 64, 'optimizer.warmup_steps': 100,
                      'optimizer.weight_decay': 0.1, 'optimizer.clip_norm': 1.0,
                      'data.val_fraction': 0.05, 'checkpoint.best_metric': 'loss',
                      'checkpoint.best_mode': 'min'})
