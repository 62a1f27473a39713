"""Sharding rules as data: (regex, PartitionSpec) pairs matched against leaf paths,
then FSDP for large leaves, else replication. Params and optimiser state follow
the same rules, so Adam moments are split exactly like their parameters.
"""
import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.parallel.mesh import BATCH_AXES

Rule = tuple[str, P]

# Logical axis names (which models give their params and activations) -> mesh axes. FSDP
# splits the embedding dimension of every matrix, tensor parallelism ('model') the heads,
# the MLP and the vocabulary; the batch goes over the batch axes.
LOGICAL_AXIS_RULES = (
    ('batch', BATCH_AXES),
    ('length', None),
    ('embed', 'fsdp'),
    ('heads', 'model'),
    ('kv', None),
    ('mlp', 'model'),
    ('vocab', 'model'),
    ('layers', None),
)


def leaf_path(path) -> str:
  """'params/Conv_0/kernel', 'opt_state/0/mu/Conv_0/kernel', ... for a tree path."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str = 'fsdp', min_size: int = 2**12) -> P:
  """Splits the largest dimension that `mesh.shape[axis]` divides; P() below `min_size` elements."""
  ways = mesh.shape.get(axis, 1)
  if ways == 1 or np.prod(shape, dtype=np.int64) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % ways == 0:
      return P(*[axis if d == dim else None for d in range(len(shape))])
  return P()


def sharding_rules(tree, mesh: Mesh, rules: Sequence[Rule] = (), *,
                   fsdp_min_size: int = 2**12):
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs).

  The first rule whose regex `re.search`es the leaf's path wins; otherwise
  `fsdp_spec` (replicated when the mesh has no 'fsdp' axis to split over).
  """
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

  def spec_for(path, leaf):
    name = leaf_path(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        return spec
    return fsdp_spec(leaf.shape, mesh, min_size=fsdp_min_size)

  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(path, leaf)), tree)


def logical_rules(module: nn.Module, example_inputs,
                  axis_rules=LOGICAL_AXIS_RULES) -> list[Rule]:
  """Sharding rules from the logical axis names a Linen module gives its params.

  axis_rules: (logical name, mesh axis or None) pairs. Each named param becomes a
  rule for its path, which also matches the optimiser-state leaves that mirror it
  (mu, nu, momentum). A module without names gives no rules.
  """
  boxed = jax.eval_shape(
      lambda: module.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
                          example_inputs, train=False))
  specs = nn.get_partition_spec(boxed.get('params', {}))
  rules = []
  for path, spec in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, P))[0]:
    if any(name is not None for name in spec):
      mesh_spec = nn.logical_to_mesh_axes(spec, axis_rules)
      rules.append((f'(^|/){re.escape(leaf_path(path))}$', mesh_spec))
  return rules


def create_sharded_state(init_fn: Callable, rng: jax.Array, mesh: Mesh,
                         rules: Sequence[Rule] = (), *, fsdp_min_size: int = 2**12):
  """Runs `init_fn(rng)` under jit with out_shardings from the rules; returns (state, shardings).

  `jax.eval_shape` gives the shapes first, so every leaf is created directly in
  its shards: nothing is ever materialised whole on one device.
  """
  abstract = jax.eval_shape(init_fn, rng)
  shardings = sharding_rules(abstract, mesh, rules, fsdp_min_size=fsdp_min_size)
  return jax.jit(init_fn, out_shardings=shardings)(rng), shardings
