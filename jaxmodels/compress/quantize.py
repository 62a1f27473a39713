"""Post-training int8 quantisation of Linen models with qwix (Conv, Dense and einsum
Projections alike: qwix intercepts `lax.conv_general_dilated`, `lax.dot_general` and
`jnp.einsum`, so no model is rewritten).

Two schemes, the same stored weights:
  'int8'  weight-only: int8 kernels (one float32 scale per output channel), dequantised
          when used; the arithmetic stays float32.
  'w8a8'  weights and activations: each layer's input is quantised on the fly (dynamic
          range: one scale per example for convolutions, per row for matmuls) and the
          product runs in int8 with int32 accumulation, rescaled to float32.

qwix's symmetric convention: scale = absmax / 127.5, q = clip(round(x / scale), -128, 127),
so the absmax bucket is used in full; x ~= q * scale.

    quantized = quantize(module, variables, example, 'w8a8')
    logits = quantized.apply(inputs)
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix

from jaxmodels.compress import measure
from jaxmodels.errors import ConfigError

SCHEMES = ('int8', 'w8a8')


def quantization_rules(scheme: str, module_path: str = '.*') -> list[qwix.QuantizationRule]:
  """qwix rules for `scheme` on the modules whose path matches `module_path` (a regex)."""
  if scheme not in SCHEMES:
    raise ConfigError(f'unknown quantisation scheme {scheme!r}; choose one of '
                      f'{", ".join(SCHEMES)}', key='scheme')
  return [qwix.QuantizationRule(module_path=module_path, weight_qtype='int8',
                                act_qtype='int8' if scheme == 'w8a8' else None)]


class _WeightOnlyPtq(qwix.PtqProvider):
  """qwix's PTQ with weight-only convolutions too: qwix 0.1.8 requires act_qtype ==
  weight_qtype for `conv_general_dilated`; here an int8 kernel is dequantised for a float
  convolution, as qwix already does for weight-only matmuls."""

  def conv_general_dilated(self, lhs, rhs, *args, **kwargs):
    rule, _ = self._get_current_rule_and_op_id('conv_general_dilated')
    if rule is None or rule.weight_qtype is None:
      return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    weight = getattr(rhs, 'array', None)
    if not isinstance(weight, qwix.QArray):
      raise ValueError('a weight-only int8 model takes quantised params (quantize_params)')
    return qwix.conv_general_dilated(lhs, weight, *args, **kwargs)


def quantized_module(module: nn.Module, scheme: str, module_path: str = '.*') -> nn.Module:
  """`module` with qwix's PTQ interception for `scheme`: it takes `quantize_params`' output."""
  rules = quantization_rules(scheme, module_path)
  provider = _WeightOnlyPtq(rules) if scheme == 'int8' else qwix.PtqProvider(rules)
  return qwix.quantize_model(module, provider)


def _abstract_quantized_params(module: nn.Module, example, module_path: str):
  """The params tree of the quantised model, as shapes, each int8 leaf carrying how qwix
  quantises it. Weights are quantised the same way in both schemes (w8a8 builds it)."""
  model = quantized_module(module, 'w8a8', module_path)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))['params']


def quantize_params(module: nn.Module, params, example, module_path: str = '.*'):
  """float params -> params whose kernels are int8 `qwix.QArray`s (qvalue int8 of the
  kernel's shape, scale float32 with 1 on every axis but the output channels); biases and
  norm parameters stay float32. example: one batch of model inputs (shapes only)."""
  params = jax.tree.map(jnp.asarray, nn.meta.unbox(params))
  return qwix.quantize_params(params, _abstract_quantized_params(module, example, module_path))


def is_quantized(leaf) -> bool:
  """True for a quantised param (qwix's wrapper of a `QArray`)."""
  return isinstance(getattr(leaf, 'array', None), qwix.QArray)


def weight_bytes(params) -> dict:
  """{'quantized', 'float'}: bytes of the quantised params' kernels as stored (int8 values and
  their scales) and of the same kernels in float32."""
  quantized = [x for x in jax.tree.leaves(params, is_leaf=is_quantized) if is_quantized(x)]
  stored = sum(x.array.qvalue.nbytes + x.array.scale.nbytes for x in quantized)
  return {'quantized': int(stored), 'float': int(sum(x.array.qvalue.size * 4 for x in quantized))}


@dataclasses.dataclass
class QuantizedModel:
  """A quantised model: the intercepted `module`, its `variables` (params with int8
  kernels, plus model state such as batch-norm statistics) and the `scheme`."""
  module: nn.Module
  variables: dict
  scheme: str

  def apply(self, inputs) -> jax.Array:
    """Outputs (inference mode) for model inputs, e.g. (B, H, W, C) float32 -> (B, classes)."""
    return _apply(self.module, self.variables, jnp.asarray(inputs))

  @property
  def weight_bytes(self) -> dict:
    return weight_bytes(self.variables['params'])

  def save(self, path: str) -> int:
    """Writes the variables (int8 values, scales, the rest) to an .npz; returns its bytes."""
    return measure.save_arrays(path, self.variables)


@jax.jit(static_argnums=0)
def _apply(module, variables, inputs):
  return module.apply(variables, inputs, train=False)


def quantize(module: nn.Module, variables: dict, example, scheme: str = 'int8',
             module_path: str = '.*') -> QuantizedModel:
  """Post-training quantisation of a trained model: `variables` = {'params': ..., **state}
  (e.g. `TrainedRun.variables`), example: one batch of model inputs."""
  params = quantize_params(module, variables['params'], example, module_path)
  state = {k: v for k, v in variables.items() if k != 'params'}
  return QuantizedModel(quantized_module(module, scheme, module_path),
                        {'params': params, **state}, scheme)


def example_inputs(card: dict) -> np.ndarray:
  """One batch of zeros shaped as a run's model inputs (its model.json `inputs`)."""
  shape = card['inputs'].get('shape')
  if shape:
    return np.zeros((1, *shape), np.float32)
  return np.zeros((1, card['inputs'].get('max_length', 1)), np.int32)


def quantize_run(run, scheme: str = 'int8', module_path: str = '.*') -> QuantizedModel:
  """A finished run (`TrainedRun`) quantised; its model.json gives the input shape."""
  return quantize(run.module, run.variables, example_inputs(run.card), scheme, module_path)


def qat_module(module: nn.Module, scheme: str, module_path: str = '.*') -> nn.Module:
  """`module` trained through qwix's fake quantisation for `scheme`: the forward pass rounds
  the kernels (and with 'w8a8' each layer's input) as the int8 model will; gradients pass
  straight through the rounding. The params stay float32, ready for `quantize`."""
  rules = [qwix.QtRule(**vars(rule)) for rule in quantization_rules(scheme, module_path)]
  return qwix.quantize_model(module, qwix.QtProvider(rules))
