"""The train step made distributed, from outside: jit with shardings, or shard_map per device."""
from collections.abc import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxmodels.parallel.mesh import BATCH_AXES, batch_sharding, replicated


def jit_train_step(train_step: Callable, state_shardings, mesh: Mesh, *,
                   batch_shardings=None, donate: bool = True):
  """`jax.jit` of a pure `step(state, batch) -> (state, metrics)` with the state's shardings
  in and out, replicated metrics, and the old state donated. The compiler partitions
  everything else.

  batch_shardings: a sharding (or pytree of them) for `batch`; by default its leading
  dimension is split over the batch axes.
  """
  batch_shardings = batch_sharding(mesh) if batch_shardings is None else batch_shardings
  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
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
