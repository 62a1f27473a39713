"""Magnitude pruning during training (Zhu & Gupta, 2017): every `every_steps` steps the
smallest-magnitude kernel weights are zeroed, by a polynomial schedule that takes the
sparsity from 0 at `begin_step` to `target` at `end_step`; from then on the masks hold.

`magnitude_pruning(tx, ...)` wraps an optax transformation: the masks live in its state
(checkpointed with it) and are applied *after* the inner update, as the update that lands
the params on `mask * (params + update)`. A pruned weight therefore stays exactly zero
whatever AdamW's moments or weight decay would do to it.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


SCOPES = ('layer', 'global')


def kernels(params):
  """True for the kernels of Conv, Dense and Projection layers (the leaves named 'kernel'):
  what pruning zeroes. Biases, norms and embeddings are left whole."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def polynomial_sparsity(step, target: float, begin_step: int, end_step: int,
                        power: float = 3.0):
  """s(t) = target * (1 - (1 - (t - begin) / (end - begin)) ** power) on [begin, end], 0
  before, target after (float64 on the host; numpy arrays of steps work)."""
  span = max(end_step - begin_step, 1)
  progress = np.clip((np.asarray(step, np.float64) - begin_step) / span, 0.0, 1.0)
  sparsity = target * (1.0 - (1.0 - progress) ** power)
  return np.where(np.asarray(step) >= end_step, target, sparsity)


def pruned_counts(sizes, sparsity: float, scope: str = 'layer') -> list[int]:
  """How many weights of each prunable leaf (sizes: element counts) are zero at `sparsity`:
  round(sparsity * size) per layer, or round(sparsity * total) over all of them ('global',
  returned as one number)."""
  if scope == 'global':
    return [int(np.round(sparsity * sum(sizes)))]
  return [int(np.round(sparsity * size)) for size in sizes]


def _keep_smallest_out(magnitudes: jax.Array, count) -> jax.Array:
  """Mask (same shape, bool) that is False on the `count` smallest entries (ties: lower index
  first), so exactly `count` entries are pruned."""
  flat = magnitudes.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return (rank >= count).reshape(magnitudes.shape)


def magnitude_masks(params, counts, scope: str = 'layer', prunable=kernels):
  """Masks (bool, the params' structure) that prune the smallest-|w| weights of the leaves
  `prunable(params)` marks (default: `kernels`; the others get all-True masks).

  counts: per prunable leaf (in tree order) the number to prune ('layer'), or one number
  for all of them together ('global'); may be traced.
  """
  flags, treedef = jax.tree.flatten(prunable(params))
  leaves = jax.tree.leaves(params)
  chosen = [leaf for leaf, flag in zip(leaves, flags) if flag]
  if scope == 'global':
    flat = jnp.concatenate([jnp.abs(x).reshape(-1).astype(jnp.float32) for x in chosen])
    splits = np.cumsum([x.size for x in chosen])[:-1]
    kept = jnp.split(_keep_smallest_out(flat, counts[0]), splits)
    masks = [m.reshape(x.shape) for m, x in zip(kept, chosen)]
  else:
    masks = [_keep_smallest_out(jnp.abs(x), count) for x, count in zip(chosen, counts)]
  masks = iter(masks)
  return jax.tree.unflatten(treedef, [next(masks) if flag else jnp.ones(leaf.shape, bool)
                                      for leaf, flag in zip(leaves, flags)])


class MagnitudePruningState(NamedTuple):
  count: jax.Array       # Updates so far (int32); the step after this one is count + 1.
  masks: Any             # bool, like the params: False where a weight is pruned.
  inner_state: Any


def magnitude_pruning(tx: optax.GradientTransformation, target: float, begin_step: int,
                      end_step: int, *, every_steps: int = 100, scope: str = 'layer',
                      power: float = 3.0, prunable=kernels) -> optax.GradientTransformation:
  """`tx`, then magnitude pruning by `polynomial_sparsity`: after update t (the state's step
  t) with t = begin + i * every_steps <= end, or t = end, the masks are recomputed from
  the updated params so that exactly `pruned_counts(sizes, s(t), scope)` weights are zero;
  then every update keeps them at zero."""
  if scope not in SCOPES:
    raise ValueError(f'scope must be one of {", ".join(SCOPES)}, got {scope!r}')
  mask_steps = np.unique(np.append(np.arange(begin_step, end_step + 1, max(every_steps, 1)),
                                   max(end_step, begin_step)))
  mask_steps = mask_steps[mask_steps > 0]  # Step 0 is before any update.

  def init(params):
    return MagnitudePruningState(jnp.zeros((), jnp.int32),
                                 jax.tree.map(lambda p: jnp.ones(p.shape, bool), params),
                                 tx.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('magnitude_pruning needs the params in update()')
    updates, inner_state = tx.update(updates, state.inner_state, params)
    step = state.count + 1
    new_params = optax.apply_updates(params, updates)
    masks = state.masks
    if len(mask_steps):
      # The counts of each mask step, exact in float64 on the host (shapes are static).
      sizes = [x.size for x, flag in zip(jax.tree.leaves(params),
                                          jax.tree.leaves(prunable(params))) if flag]
      table = np.array([pruned_counts(sizes, polynomial_sparsity(t, target, begin_step, end_step,
                                                                 power), scope)
                        for t in mask_steps], np.int32)
      index = jnp.clip(jnp.searchsorted(mask_steps, step), 0, len(mask_steps) - 1)
      masks = jax.lax.cond(
          jnp.asarray(mask_steps)[index] == step,
          lambda: magnitude_masks(new_params, jnp.asarray(table)[index], scope, prunable),
          lambda: state.masks)
    # Lands on mask * (params + update): exactly 0 where pruned (p + (-p) == 0).
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params,
                           masks)
    return updates, MagnitudePruningState(step, masks, inner_state)

  return optax.GradientTransformation(init, update)


def sparsity_report(params, prunable=kernels) -> dict:
  """{'overall': zero share of the prunable weights, 'layers': {path: zero share}}."""
  flags = jax.tree.leaves(prunable(params))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  layers, zeros, total = {}, 0, 0
  for (path, leaf), flag in zip(leaves, flags):
    if flag:
      leaf = np.asarray(leaf)
      count = int(np.sum(leaf == 0))
      layers[jax.tree_util.keystr(path, simple=True, separator='/')] = count / leaf.size
      zeros, total = zeros + count, total + leaf.size
  return {'overall': zeros / max(total, 1), 'layers': layers}
