"""The train step made distributed, from outside: jit with shardings, or shard_map per device."""
from collections.abc import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxmodels.parallel.mesh import BATCH_AXES, batch_sharding, replicated


def jit_train_step(train_step: Callable, state_shardings, mesh: Mesh, *, donate: bool = True):
  """`jax.jit` of a pure step with the state's shardings in and out, the batch split over
  BATCH_AXES, and the old state donated. The compiler partitions everything else."""
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def per_device_step(train_step: Callable, mesh: Mesh, axes=BATCH_AXES) -> Callable:
  """The pmap style through `jax.shard_map`: each device runs `train_step` on its batch shard.

  Build the step with `make_train_step(..., axis_name=axes)` so that it
  `lax.pmean`s its gradients over those axes. Params are replicated (P()); the
  result is a (state, batch) -> (state, metrics) function to jit or pass to fit.
  `check_vma=False` keeps pmap's semantics: each device's gradient is its own
  until the explicit pmean (with the check on, JAX would sum them implicitly).
  """
  return jax.shard_map(train_step, mesh=mesh, in_specs=(P(), P(axes)), out_specs=(P(), P()),
                       check_vma=False)
