"""Structured channel pruning: whole output channels of each convolution are removed, so the
kernels really shrink -- the convolution's output axis, its batch-norm (scale, bias, running
mean and variance), and the input axis of the layer that reads it (the next convolution, or
the dense layer's rows for those channels at every spatial position). The result is a
smaller model of the same family (narrower `widths`), with fewer FLOPs, that `TrainedRun`
saves and loads and that fine-tunes through `init_from`.

Channels are ranked by the L1 norm of their filter times the batch-norm gain
|gamma| / sqrt(var + eps) that follows it (Li et al., 2017; Liu et al., 2017).
"""
import dataclasses
import os

import jax
import numpy as np

from jaxmodels.errors import ConfigError
from jaxmodels.runs.model_config import build_module

BATCH_NORM_EPSILON = 1e-5  # flax.linen.BatchNorm's default, as the models use it.
MODELS = ('three_conv_cnn', 'cifar10_cnn', 'convnet')


@dataclasses.dataclass(frozen=True)
class ConvUnit:
  """One convolution (its params path), the batch-norm after it (or None), and the `widths`
  entry it belongs to (the convolutions of one ConvNet stage share a width)."""
  conv: tuple[str, ...]
  norm: tuple[str, ...] | None
  width_index: int


def conv_units(name: str, params) -> list[ConvUnit]:
  """The model's convolutions in order, read from its params; the last feeds 'Dense_0'."""
  count = lambda tree, prefix: sum(1 for key in tree if key.startswith(prefix))
  if name in ('three_conv_cnn', 'cifar10_cnn'):
    return [ConvUnit((f'Conv_{i}',), (f'BatchNorm_{i}',) if f'BatchNorm_{i}' in params else None,
                     i) for i in range(count(params, 'Conv_'))]
  if name == 'convnet':
    return [ConvUnit((f'stage{s}', f'Conv_{j}'), (f'stage{s}', f'BatchNorm_{j}'), s)
            for s in range(count(params, 'stage')) for j in range(count(params['stage0'], 'Conv_'))]
  raise ConfigError(f'structured channel pruning supports {", ".join(MODELS)}, not {name!r}',
                    key='model.name')


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def channel_importance(params, state, unit: ConvUnit) -> np.ndarray:
  """(out_channels,) L1 norm of each filter, times the following batch-norm's gain."""
  kernel = np.asarray(_get(params, unit.conv)['kernel'])  # (h, w, in, out)
  score = np.abs(kernel).sum(axis=(0, 1, 2))
  if unit.norm is not None:
    gamma = np.asarray(_get(params, unit.norm)['scale'])
    var = np.asarray(_get(state['batch_stats'], unit.norm)['var'])
    score = score * np.abs(gamma) / np.sqrt(var + BATCH_NORM_EPSILON)
  return score


def prune_channels(name: str, arguments: dict, variables: dict, fraction: float,
                   input_shape) -> tuple[dict, dict]:
  """(arguments, variables) of the model with `fraction` of each convolution's channels
  removed (at least one kept; the convolutions of a ConvNet stage keep the same number).
  variables: {'params': ..., 'batch_stats': ...} as `TrainedRun.variables` holds them;
  input_shape: (H, W, C) of the images (the dense layer's rows depend on it)."""
  if not 0 <= fraction < 1:
    raise ConfigError(f'the share of channels to prune must be in [0, 1), got {fraction}',
                      key='fraction')
  variables = jax.tree.map(np.asarray, variables)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  units = conv_units(name, params)
  widths = [int(_get(params, u.conv)['kernel'].shape[-1]) for u in units]
  keep_of = {}
  for u, width in zip(units, widths):
    keep_of[u.width_index] = max(1, int(round(width * (1 - fraction))))
  previous = None  # Channels kept by the convolution before (its input).
  for u in units:
    order = np.argsort(-channel_importance(params, state, u), kind='stable')
    keep = np.sort(order[:keep_of[u.width_index]])
    conv = dict(_get(params, u.conv))
    kernel = conv['kernel'] if previous is None else conv['kernel'][:, :, previous]
    conv['kernel'] = kernel[..., keep]
    if 'bias' in conv:
      conv['bias'] = conv['bias'][keep]
    _set(params, u.conv, conv)
    if u.norm is not None:
      _set(params, u.norm, {k: v[keep] for k, v in _get(params, u.norm).items()})
      _set(state['batch_stats'], u.norm,
           {k: v[keep] for k, v in _get(state['batch_stats'], u.norm).items()})
    previous = keep
  # The dense layer reads (H, W, C) flattened (C fastest), or the channel means (C,).
  dense = dict(params['Dense_0'])
  channels = widths[-1]
  positions = dense['kernel'].shape[0] // channels
  rows = (np.arange(positions)[:, None] * channels + previous[None, :]).reshape(-1)
  dense['kernel'] = dense['kernel'][rows]
  params['Dense_0'] = dense
  stage_widths = [keep_of[i] for i in sorted(keep_of)]
  arguments = {**arguments, 'widths': stage_widths}
  _check_shapes(name, arguments, {'params': params, **state}, input_shape)
  return arguments, {'params': params, **state}


def _check_shapes(name, arguments, variables, input_shape):
  """The pruned variables are exactly what the narrower model takes."""
  module = build_module(name, arguments)
  example = np.zeros((1, *input_shape), np.float32)
  expected = jax.eval_shape(lambda: module.init(jax.random.key(0), example, train=False))
  got = jax.tree.map(np.shape, variables)
  if got != jax.tree.map(lambda x: tuple(x.shape), expected):
    raise ValueError(f'the pruned variables do not fit {name} with {arguments}')


def prune_run_channels(run, fraction: float):
  """A `TrainedRun` with `fraction` of its channels pruned: a new, narrower run (not yet
  saved; `.save(workdir)` writes it)."""
  model = run.card['model']
  arguments, variables = prune_channels(model['name'], model['arguments'], run.variables,
                                        fraction, run.card['inputs']['shape'])
  card = {**run.card, 'model': {**model, 'arguments': arguments},
          'pruned_channels': {'fraction': fraction, 'from': os.path.abspath(run.workdir)}}
  card.pop('test', None)  # The pruned model has not been tested yet.
  return dataclasses.replace(run, workdir='', card=card,
                             module=build_module(model['name'], arguments), variables=variables)
