"""The device mesh: named axes 'data', 'fsdp' and 'model', sized from a config."""
import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'model')
# The batch is split over both: FSDP is data parallelism whose params are split too.
BATCH_AXES = ('data', 'fsdp')


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for MESH_AXES from {'data': -1, 'fsdp': 2, ...}; one -1 takes what is left."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f'unknown mesh axes {sorted(unknown)}; the axes are {", ".join(MESH_AXES)}')
  shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ConfigError(f'mesh sizes {dict(zip(MESH_AXES, shape))} must be positive, with at most one -1')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f'{num_devices} devices cannot fill mesh {dict(zip(MESH_AXES, shape))}: '
                        f'the fixed axes ({known}) must divide the device count')
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f'mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, '
                      f'but there are {num_devices}; use -1 for one axis to size it automatically')
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A mesh over `devices` (default: all, every process) with axes MESH_AXES.

  Axis types are Auto: shardings given at jit boundaries propagate through the
  model by the compiler, so models need no sharding annotations. Use it with
  `jax.set_mesh(mesh)` or pass it where a mesh is asked for.
  """
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(dict(sizes or {'data': -1}), len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def single_device_mesh() -> Mesh:
  """A mesh of this process's first device (every axis of size 1): what `fit` uses by default."""
  return make_mesh({'data': 1}, devices=jax.local_devices()[:1])


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The axes of `mesh` that split the batch (BATCH_AXES, where the mesh has them)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension split over BATCH_AXES, the rest whole."""
  return NamedSharding(mesh, P(batch_axes(mesh), *([None] * (ndim - 1))))


def place_global(host, sharding) -> jax.Array:
  """A host array that every process holds whole, as one global array laid out by `sharding`
  (each device takes its own block of it)."""
  host = np.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_state(state, mesh: Mesh):
  """Leaves already on `mesh` keep their sharding; the others are replicated onto it."""
  def place(x):
    if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
      return x
    return place_global(x, replicated(mesh))

  return jax.tree.map(place, state)


def shard_batch(batch, mesh: Mesh):
  """Process-local numpy leaves (b, ...) -> global arrays (b * processes, ...) split over BATCH_AXES.

  Each process passes its own part of the global batch (all of it, when there
  is one process), via `jax.make_array_from_process_local_data`.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)),
                                                       np.asarray(x)), batch)
