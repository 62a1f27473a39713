"""A submodule's output, read or replaced from outside the model: Flax's method interception
(`nn.intercept_methods`), so that Grad-CAM and embedding attributions work on any Linen model
without a change to its code. A layer is named by its module path, 'stage2' or
'encoder/layer0/attention' ('/'-joined, as in the params tree)."""
from collections.abc import Callable

import flax.linen as nn
import jax

from jaxmodels.errors import InputError


def _path(layer: str) -> tuple[str, ...]:
  return tuple(part for part in layer.split('/') if part)


def layer_outputs(module: nn.Module, variables, inputs) -> list[tuple[str, tuple, type]]:
  """[(path, output shape, module class)] of every submodule call, in the order the calls
  return (a parent after its children); shapes only: nothing is computed."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.path:
      calls.append(('/'.join(context.module.path), getattr(out, 'shape', None),
                    type(context.module)))
    return out

  def trace(variables, inputs):
    with nn.intercept_methods(record):
      return module.apply(variables, inputs)

  jax.eval_shape(trace, variables, inputs)
  return calls


def last_feature_map(module: nn.Module, variables, inputs) -> str:
  """The path of the last layer to return a spatial map (B, h, w, C) with h, w > 1: the
  usual Grad-CAM layer (a CNN's last convolution stage). InputError if there is none."""
  maps = [path for path, shape, _ in layer_outputs(module, variables, inputs)
          if shape is not None and len(shape) == 4 and shape[1] > 1 and shape[2] > 1]
  if not maps:
    raise InputError(f'{type(module).__name__} has no layer with a spatial output (B, h, w, C) '
                     'for Grad-CAM; use a gradient method')
  return maps[-1]


def first_layer_of_type(module: nn.Module, variables, inputs, kind: type) -> str:
  """The path of the first `kind` layer called (e.g. the token embedding, nn.Embed)."""
  for path, _, cls in layer_outputs(module, variables, inputs):
    if issubclass(cls, kind):
      return path
  raise InputError(f'{type(module).__name__} has no {kind.__name__} layer')


def apply_with_layer(module: nn.Module, variables, inputs, layer: str,
                     replace: Callable = lambda out: out):
  """(outputs, the layer's own output): `module.apply(variables, inputs)` with the output
  `out` of `layer` replaced by `replace(out)` for the rest of the model. Differentiable in
  whatever `replace` closes over (Grad-CAM adds a zero perturbation and differentiates it)."""
  path, seen = _path(layer), []

  def swap(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.path == path:
      seen.append(out)
      return replace(out)
    return out

  with nn.intercept_methods(swap):
    outputs = module.apply(variables, inputs)
  if not seen:
    raise InputError(f'{type(module).__name__} has no layer {layer!r}')
  return outputs, seen[0]
