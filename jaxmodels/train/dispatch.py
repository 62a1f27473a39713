"""Runs k train steps per dispatch over device-resident data: one compiled program per
distinct k, built through `parallel.jit_train_step` (the state's shardings in and out,
the state donated), ahead of time so that compile time stays out of throughput. Single
steps may read the same batches as host rows instead (`host_fed_single_steps`)."""
import concurrent.futures
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels import parallel
from jaxmodels.data.batching import ShardedExamples, as_batch, epoch_batch_indices, take_batch
from jaxmodels.errors import InputError
from jaxmodels.report.throughput import compiled_flops
from jaxmodels.train.metrics import merge


class StepRunner:
  """`run(state, epoch, position, k)` takes train steps position..position+k-1 of `epoch`.

  The batches of an epoch come from `epoch_batch_indices(data_rng, epoch, ...)`,
  so a position names its batch exactly and a resumed run sees the same data.
  unroll: the k steps of a dispatch as straight-line code rather than a loop.
  host_fed_single_steps: a single step reads its batch as numpy rows (`take_batch`'s rows)
  instead of gathering it inside the program; for a single device whose memory is the host's.
  """

  def __init__(self, train_step: Callable, state, data: ShardedExamples, batch_size: int,
               data_rng: jax.Array, *, unroll: bool = False,
               host_fed_single_steps: bool = False):
    self._train_step, self._data = train_step, data
    mesh = data.mesh
    self._epoch_indices = jax.jit(
        lambda rng, epoch: epoch_batch_indices(rng, epoch, data, batch_size))
    self._rng, self._epoch, self._indices = data_rng, None, None
    # Shapes and shardings only: the indices are drawn while the step compiles (compile),
    # and the live state's buffers are donated by the first dispatch.
    indices = jax.eval_shape(self._epoch_indices, data_rng, 0)
    indices_sharding = NamedSharding(mesh, P(None, data.axes))
    self._state_shardings = jax.tree.map(lambda x: x.sharding, state)
    self._data_shardings = (jax.tree.map(lambda x: x.sharding, data.arrays), indices_sharding,
                            NamedSharding(mesh, P()))
    self._shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                (state, (data.arrays, indices, jnp.zeros((), jnp.int32))))
    self._compiled, self.compile_seconds, self.flops_per_step = {}, 0.0, None
    self._unroll, self._host, self._batch_size = unroll, host_fed_single_steps, batch_size
    self._host_arrays = self._host_indices = None

  def _indices_for(self, epoch: int):
    if epoch != self._epoch:
      self._epoch, self._indices = epoch, self._epoch_indices(self._rng, epoch)
      self._host_indices = None
    return self._indices

  def _from_host(self, num_steps: int) -> bool:
    return self._host and num_steps == 1

  def _host_batch(self, epoch: int, position: int) -> dict:
    """Batch `position` of `epoch` as numpy arrays: the rows `take_batch` would gather."""
    indices = self._indices_for(epoch)
    if self._host_indices is None:
      self._host_indices = np.asarray(indices)
    if self._host_arrays is None:
      self._host_arrays = {k: np.asarray(v) for k, v in self._data.arrays.items()}
    rows = self._host_indices[position]
    return as_batch({k: v[rows] for k, v in self._host_arrays.items()})

  def _steps(self, state, data, *, num_steps):
    arrays, indices, offset = data
    indices = jax.lax.dynamic_slice_in_dim(indices, offset, num_steps)
    one_step = lambda state, index: self._train_step(
        state, take_batch(arrays, index, self._data.mesh, self._data.axes))

    def accumulate(carry, index):
      state, metrics = carry
      state, step_metrics = one_step(state, index)
      return (state, merge(metrics, step_metrics)), None

    # The first step gives the metrics' structure; the scan runs the rest.
    (state, metrics), _ = jax.lax.scan(accumulate, one_step(state, indices[0]), indices[1:],
                                       unroll=True if self._unroll else 1)
    return state, metrics

  def _lower(self, num_steps: int):
    if self._from_host(num_steps):
      jitted = parallel.jit_train_step(self._train_step, self._state_shardings, self._data.mesh)
      shapes = self._shapes[0], self._batch_shapes()
    else:
      jitted = parallel.jit_train_step(functools.partial(self._steps, num_steps=num_steps),
                                       self._state_shardings, self._data.mesh,
                                       batch_shardings=self._data_shardings)
      shapes = self._shapes
    try:
      return jitted.lower(*shapes)
    except Exception as e:  # Flax and JAX raise many types for shape mismatches.
      first_batch = take_batch(self._data.arrays, self._indices_for(0)[0], self._data.mesh,
                               self._data.axes)
      raise_batch_error(e, first_batch)

  def compile(self, sizes) -> None:
    """Compiles the programs for these numbers of steps per call, at the same time, and
    draws the first epoch's batch order beside them, from before the tracing: XLA
    compiles the draw while Python traces the step on another core."""
    sizes = sorted(set(sizes) - set(self._compiled))
    if not sizes:
      return
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(sizes) + 1) as pool:
      # Only before the first draw: a later compile must not replace the epoch in use.
      indices = pool.submit(self._indices_for, 0) if self._indices is None else None
      lowered = [self._lower(n) for n in sizes]
      compiled = list(pool.map(lambda program: program.compile(), lowered))
      if indices:
        indices.result()
    self.compile_seconds += time.perf_counter() - start
    for num_steps, program in zip(sizes, compiled):
      self._compiled[num_steps] = program
      flops = compiled_flops(program)
      if flops and self.flops_per_step is None:  # Per device -> every device, per step.
        self.flops_per_step = flops * self._data.mesh.size / num_steps

  def _batch_shapes(self) -> dict:
    return as_batch({k: jax.ShapeDtypeStruct((self._batch_size, *v.shape[1:]), v.dtype)
                     for k, v in self._data.arrays.items()})

  def _program(self, num_steps: int):
    self.compile([num_steps])
    return self._compiled[num_steps]

  @property
  def dispatch_sizes(self) -> tuple[int, ...]:
    return tuple(sorted(self._compiled))

  def run(self, state, epoch: int, position: int, num_steps: int):
    """(state, merged metrics) after `num_steps` steps from `position` of `epoch`."""
    if self._from_host(num_steps):
      return self._program(1)(state, self._host_batch(epoch, position))
    indices = self._indices_for(epoch)
    return self._program(num_steps)(
        state, (self._data.arrays, indices, jnp.asarray(position, jnp.int32)))


def raise_batch_error(error: Exception, batch) -> None:
  """The train step could not be traced on this data: one line naming the batch."""
  describe = ', '.join(f'{k} {tuple(v.shape)} {v.dtype}' for k, v in batch.items()
                       if k != 'mask')
  text = str(error).strip()
  first_line = text.splitlines()[0] if text else type(error).__name__
  raise InputError(f'the train step rejects a batch of {describe}: {type(error).__name__}: '
                   f'{first_line[:300]}') from error
