"""Compression switched on by config in any run: quantisation-aware training
(`quantization.qat`) and magnitude pruning with a polynomial sparsity schedule
(`pruning.sparsity`). Both are `runs.Extension`s; the command line applies them to every run."""
import math

from jaxmodels import parallel
from jaxmodels.compress import pruning
from jaxmodels.compress.quantize import SCHEMES, qat_module
from jaxmodels.errors import ConfigError
from jaxmodels.schema import Field, Schema, at_least, one_of, share, steps_of
from jaxmodels.runs.extension import Extension


class QuantizationAware(Extension):
  """Trains through int8 fake quantisation when `quantization.qat` is not 'none'; the run's
  params stay float32 and `compress.quantize_run` turns them into the int8 model."""
  schema = Schema({
      'quantization.qat': Field('none', "Quantisation-aware training: 'int8' (weights) or "
                                "'w8a8' (weights and activations) rounded to int8 in the "
                                "forward pass; 'none': off.", **one_of('none', *SCHEMES)),
      'quantization.module_path': Field('.*', 'Regex of the module paths that are quantised '
                                        "(e.g. '^(?!Dense_1).*' keeps the classifier float)."),
  })

  def model(self, config, module):
    cfg = config.quantization
    return module if cfg.qat == 'none' else qat_module(module, cfg.qat, cfg.module_path)

  def report(self, ctx, test):
    scheme = ctx.config.quantization.qat
    return {} if scheme == 'none' else {'quantization_aware': scheme}


class MagnitudePruning(Extension):
  """Prunes kernels by magnitude during training when `pruning.sparsity` > 0: the sparsity
  rises from 0 at `pruning.begin_*` to the target at `pruning.end_*` (cubic), the masks then
  hold for the rest of the run. The summary reports the sparsity reached, layer by layer."""
  schema = Schema({
      'pruning.sparsity': Field(0.0, 'Share of the kernel weights set to zero by the end of '
                                'pruning (0: off).', **share(zero_ok=True)),
      'pruning.scope': Field('layer', "'layer': that share of each kernel; 'global': of all "
                             'kernels together, the smallest magnitudes wherever they are.',
                             **one_of(*pruning.SCOPES)),
      'pruning.begin_epochs': Field(0.0, 'Pruning starts here (epochs).', **at_least(0)),
      'pruning.begin_steps': Field(0, 'Pruning starts here (steps; wins over epochs).',
                                   **at_least(0)),
      'pruning.end_epochs': Field(0.0, 'The target sparsity is reached here (epochs); 0 and '
                                  'end_steps 0: at three quarters of the run.', **at_least(0)),
      'pruning.end_steps': Field(0, 'The target is reached here (steps; wins over epochs).',
                                 **at_least(0)),
      'pruning.every_steps': Field(100, 'Recompute the masks every N steps while pruning.',
                                   **at_least(1)),
  })

  def optimizer(self, config, tx, steps_per_epoch):
    cfg = config.pruning
    if not cfg.sparsity:
      return tx
    total = steps_of(config.train, steps_per_epoch, 'num')
    begin = steps_of(cfg, steps_per_epoch, 'begin')
    end = steps_of(cfg, steps_per_epoch, 'end', math.ceil(0.75 * total))
    if not begin <= end <= total:
      raise ConfigError(f'pruning must end (step {end}) after it begins (step {begin}) and '
                        f'within the run ({total} steps): check pruning.begin_* / end_*',
                        key='pruning.end_epochs')
    return pruning.magnitude_pruning(tx, cfg.sparsity, begin, end, every_steps=cfg.every_steps,
                                     scope=cfg.scope)

  def report(self, ctx, test):
    if not ctx.config.pruning.sparsity:
      return {}
    reached = pruning.sparsity_report(parallel.host_copy(ctx.state.params))
    ctx.say(f"sparsity reached: {reached['overall']:.4f} of the kernel weights are zero")
    return {'sparsity': {'target': ctx.config.pruning.sparsity, 'scope': ctx.config.pruning.scope,
                         **reached}}
