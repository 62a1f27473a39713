"""Fine-tuning controls of every run (finetune.*): frozen params, LoRA adapters and
layer-wise learning-rate decay, as one Extension (see `jaxmodels.finetune`)."""
import re

import optax
from flax import traverse_util

from jaxmodels import finetune
from jaxmodels.errors import ConfigError
from jaxmodels.schema import REGEX, Field, Schema, at_least
from jaxmodels.runs.extension import Extension


def _is_frozen(config):
  """finetune.*'s `is_frozen(path)` rule, or None when nothing is frozen."""
  cfg = config.finetune
  if not (cfg.freeze or cfg.trainable or cfg.lora.rank):
    return None
  return finetune.frozen_rule(cfg.freeze, cfg.trainable, lora=cfg.lora.rank > 0)


class FineTune(Extension):
  schema = Schema({
      'finetune.freeze': Field('', 'Regex (searched in param paths such as '
                               'encoder/layer0/mlp/Dense_0/kernel): these params stay fixed '
                               '(no update, no optimiser state, no weight decay).', **REGEX),
      'finetune.trainable': Field('', 'Regex: if set, only the params it matches train (and '
                                  'LoRA adapters); e.g. head for a linear probe.', **REGEX),
      'finetune.layer_decay': Field(1.0, 'Layer-wise learning-rate decay: the head at the full '
                                    'rate, each layer below this factor times the one above '
                                    '(1: off).', check=lambda v: 0 < v <= 1,
                                    requirement='must be in (0, 1]'),
      'finetune.lora.rank': Field(0, 'LoRA adapters of this rank on the layers finetune.lora.'
                                  'modules matches (0: off); the original params are then '
                                  'frozen, except those finetune.trainable matches.',
                                  **at_least(0)),
      'finetune.lora.alpha': Field(16.0, 'LoRA scale: an adapter adds (alpha / rank) x A B.',
                                   **at_least(0, strict=True)),
      'finetune.lora.modules': Field('.*attention/(query|value)', 'Regex fullmatched against '
                                     'module paths (e.g. bert/encoder/layer0/attention/query, '
                                     'encoder/layer0/mlp/Dense_0) that get LoRA adapters.',
                                     **REGEX),
  })

  def model(self, config, module):
    lora = config.finetune.lora
    return finetune.with_lora(module, lora.rank, lora.alpha, lora.modules) if lora.rank else module

  def optimizer(self, config, tx, steps_per_epoch: int):
    del steps_per_epoch
    if is_frozen := _is_frozen(config):
      tx = finetune.freeze(tx, is_frozen)
    if config.finetune.layer_decay != 1.0:
      tx = optax.chain(tx, finetune.scale_by_layer_decay(config.finetune.layer_decay))
    return tx

  def initialize(self, config, module, state):
    """Refuses (before anything is saved) regexes that match no param."""
    cfg, paths = config.finetune, list(traverse_util.flatten_dict(state.params, sep='/'))
    if cfg.lora.rank and not any(map(finetune.is_adapter, paths)):
      raise ConfigError(f'finetune.lora.modules={cfg.lora.modules!r} matches no layer of '
                        f'{config.model.name} (module paths look like '
                        f'{finetune.kernel_modules(paths)})', key='finetune.lora.modules')
    for key in ('freeze', 'trainable'):
      if cfg[key] and not any(re.search(cfg[key], p) for p in paths):
        raise ConfigError(f'finetune.{key}={cfg[key]!r} matches no param of '
                          f'{config.model.name} (paths look like {paths[0]})',
                          key=f'finetune.{key}')
    return state

  def report(self, ctx, test):
    if not (is_frozen := _is_frozen(ctx.config)):
      return {}
    extra = {'finetune': finetune.param_counts(ctx.state.params, ctx.state.opt_state, is_frozen)}
    if ctx.config.finetune.lora.rank:  # TrainedRun merges the adapters with this.
      extra['model_card'] = {'lora': {'alpha': ctx.config.finetune.lora.alpha}}
    return extra
