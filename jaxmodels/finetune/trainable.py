"""Optax pieces for fine-tuning: freezing params by path (no update, no optimiser state,
so weight decay cannot move them) and layer-wise learning-rate decay.

Param paths are 'encoder/layer3/mlp/Dense_0/kernel' ('/' between names), as
`parallel.leaf_path` writes them.
"""
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.finetune.lora import is_adapter
from jaxmodels.parallel import leaf_path

_LAYER = re.compile(r'(?:^|/)layer(\d+)/')
_STACKED = re.compile(r'(?:^|/)layers/')
_EMBEDDING = re.compile(r'(?:^|/)(?:cls|[a-z_]*embed[a-z_]*)(?:/|$)')


def path_labels(params, label: Callable[[str], str]):
  """The tree of `label(path)` for each leaf of `params`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: label(leaf_path(path)), params)


def frozen_rule(freeze: str = '', trainable: str = '', lora: bool = False
                ) -> Callable[[str], bool]:
  """`is_frozen(path)`: the param stays fixed if its path matches the `freeze` regex, or
  `trainable` is set and the path does not match it, or LoRA is on (the base is frozen);
  LoRA adapters always train."""
  def is_frozen(path: str) -> bool:
    if is_adapter(path):
      return False
    if freeze and re.search(freeze, path):
      return True
    return not re.search(trainable, path) if trainable else lora
  return is_frozen


def param_counts(params, opt_state, is_frozen: Callable[[str], bool]) -> dict:
  """Trainable and frozen param counts, and the number of optimiser-state values."""
  sizes = {leaf_path(path): x.size for path, x in jax.tree_util.tree_leaves_with_path(params)}
  frozen = sum(size for path, size in sizes.items() if is_frozen(path))
  return {'trainable_params': int(sum(sizes.values()) - frozen), 'frozen_params': int(frozen),
          'optimizer_state_values': int(sum(x.size for x in jax.tree.leaves(opt_state)))}


def freeze(tx: optax.GradientTransformation, is_frozen: Callable[[str], bool]
           ) -> optax.GradientTransformation:
  """`tx` on the params whose path is not frozen; `optax.set_to_zero` on the others.

  As `optax.selective_transform`, with the mask computed from the param paths when the
  state is created: frozen leaves carry no optimiser state at all (adam moments included),
  and weight decay, being part of `tx`, never reaches them.
  """
  return optax.partition(
      {'train': tx, 'freeze': optax.set_to_zero()},
      lambda params: path_labels(params, lambda p: 'freeze' if is_frozen(p) else 'train'))


def layer_index(path: str, num_layers: int) -> int:
  """0 for embeddings, i + 1 for layer i, num_layers + 1 for what comes after (final norm,
  pooler, head)."""
  match = _LAYER.search(path)
  if match:
    return int(match.group(1)) + 1
  return 0 if _EMBEDDING.search(path) else num_layers + 1


def num_layers_of(params) -> int:
  """The depth of a layer stack: 'layerN' names, or the leading axis of scanned 'layers'."""
  depth = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = leaf_path(path)
    match = _LAYER.search(name)
    if match:
      depth = max(depth, int(match.group(1)) + 1)
    elif _STACKED.search(name):
      depth = max(depth, leaf.shape[0])
  return depth


def layer_decay_factors(params, decay: float):
  """Per-leaf learning-rate factors decay ** (L + 1 - layer_index): the head trains at the
  full rate, each layer below at `decay` times the one above, the embeddings at
  decay ** (L + 1). Scanned layers get a factor per layer along their leading axis."""
  depth = num_layers_of(params)

  def factor(path, leaf):
    name = leaf_path(path)
    if _STACKED.search(name):
      powers = depth - jnp.arange(leaf.shape[0], dtype=jnp.float32)
      return (decay ** powers).reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.asarray(decay ** (depth + 1 - layer_index(name, depth)), jnp.float32)

  return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_decay_factors` (apply after the learning rate)."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    factors = layer_decay_factors(updates, decay)
    return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors), state

  return optax.GradientTransformation(init, update)
