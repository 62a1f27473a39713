"""`fit`: run a pure train step over device-resident data, with periodic evaluation,
logging, checkpoints, callbacks and a progress bar."""
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxmodels.data.batching import (epoch_batch_indices, num_shards, per_shard_batch,
                                     shard_examples, take_batch)
from jaxmodels.errors import InputError, NonFiniteError, Preempted
from jaxmodels.report.throughput import compiled_flops
from jaxmodels.train.callbacks import Callback
from jaxmodels.train.evaluate import Evaluator, _batch_axes, single_device_mesh
from jaxmodels.train.guards import NAN_POLICIES, PreemptionGuard, skip_nonfinite
from jaxmodels.train.metrics import merge, summarize


@dataclasses.dataclass
class History:
  """Rows of logged values: {'step', 'epoch', metric: float, ...} per log / eval."""
  train: list = dataclasses.field(default_factory=list)
  eval: list = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  flops_per_step: float | None = None  # XLA's count for the compiled step, all devices.
  train_seconds: float = 0.0  # Excludes compilation and evaluation.
  train_examples: int = 0

  @property
  def examples_per_sec(self) -> float:
    return self.train_examples / max(self.train_seconds, 1e-9)

  def series(self, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in getattr(self, split) if key in r]
    return np.array([r['step'] for r in rows]), np.array([r[key] for r in rows])


def _zeros_like_shapes(tree):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in summarize(metrics).items() if np.ndim(v) == 0}


class _StepRunner:
  """Compiles `k` train steps per dispatch, once per distinct k, ahead of time.

  Built once with the state's shardings in and out and the state donated.
  Ahead-of-time compilation keeps compile time out of the throughput figures.
  """

  def __init__(self, train_step, state, arrays, batch_indices, mesh, axes, donate):
    self._train_step, self._mesh, self._axes = train_step, mesh, axes
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    replicated = NamedSharding(mesh, P())
    self._jit_kwargs = dict(
        in_shardings=(state_shardings, jax.tree.map(lambda x: x.sharding, arrays),
                      batch_indices.sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,) if donate else ())
    # Shapes only: the live state's buffers are donated by the first dispatch.
    self._args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              (state, arrays, batch_indices, jnp.zeros((), jnp.int32)))
    self._compiled, self.compile_seconds, self.flops_per_step = {}, 0.0, None

  def _run(self, state, arrays, batch_indices, offset, *, num_steps):
    indices = jax.lax.dynamic_slice_in_dim(batch_indices, offset, num_steps)

    def one_step(state, batch_index):
      return self._train_step(state, take_batch(arrays, batch_index, self._mesh, self._axes))

    def accumulate(carry, batch_index):
      state, metrics = carry
      state, step_metrics = one_step(state, batch_index)
      return (state, merge(metrics, step_metrics)), None

    # The first step gives the metrics' structure; the scan runs the rest. XLA:CPU runs
    # convolution gradients several times slower inside a while loop, so on CPU the scan
    # is unrolled into straight-line code; elsewhere it stays a loop (faster compiles).
    unroll = True if jax.default_backend() == 'cpu' else 1
    carry = one_step(state, indices[0])
    (state, metrics), _ = jax.lax.scan(accumulate, carry, indices[1:], unroll=unroll)
    return state, metrics

  def __call__(self, num_steps, state, arrays, batch_indices, offset):
    if num_steps not in self._compiled:
      start = time.perf_counter()
      jitted = jax.jit(functools.partial(self._run, num_steps=num_steps), **self._jit_kwargs)
      self._compiled[num_steps] = jitted.lower(*self._args).compile()
      self.compile_seconds += time.perf_counter() - start
      flops = compiled_flops(self._compiled[num_steps])
      if flops and self.flops_per_step is None:  # Per device -> every device, per step.
        self.flops_per_step = flops * self._mesh.size / num_steps
    return self._compiled[num_steps](state, arrays, batch_indices, jnp.asarray(offset, jnp.int32))


class _Rate:
  """Training images/s between host syncs; compilation and evaluation are left out."""

  def __init__(self, runner: _StepRunner):
    self._runner = runner
    self.restart()

  def restart(self):
    self._start, self._compiled, self._images = (time.perf_counter(),
                                                 self._runner.compile_seconds, 0)

  def add(self, images: int):
    self._images += images

  def take(self, history: 'History') -> float:
    """The rate since the last take/restart; adds the interval to the history's totals."""
    elapsed = time.perf_counter() - self._start - (self._runner.compile_seconds - self._compiled)
    history.train_seconds += elapsed
    history.train_examples += self._images
    rate = self._images / max(elapsed, 1e-9)
    self.restart()
    return rate


def _place_state(state, mesh: Mesh):
  """Leaves already on `mesh` keep their sharding; others are replicated onto it."""
  replicated = NamedSharding(mesh, P())

  def place(x):
    if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
      return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, replicated, lambda index: host[index])

  return jax.tree.map(place, state)


def _check_batch_fits(train_step, state, batch):
  """Traces one step abstractly, so a batch the model cannot take fails here in one line."""
  try:
    jax.eval_shape(train_step, state, batch)
  except Exception as e:  # Flax and JAX raise many types for shape mismatches.
    describe = ', '.join(f'{k} {tuple(v.shape)} {v.dtype}' for k, v in batch.items())
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise InputError(f'the train step rejects a batch of {describe}: {type(e).__name__}: '
                     f'{first_line[:300]}') from e


def _position_meta(step: int, steps_per_epoch: int) -> dict:
  epoch, step_in_epoch = divmod(step, steps_per_epoch)
  return {'step': step, 'epoch': epoch, 'step_in_epoch': step_in_epoch}


def _check_finite(logs: dict, step: int, steps_in_interval: int):
  """NonFiniteError naming the first bad step when the logged loss or grad norm is NaN/inf."""
  if np.isfinite(logs['loss']) and np.isfinite(logs.get('grad_norm', 0.0)):
    return
  # NaN in the params persists, so the bad steps are the last ones of the interval.
  bad = max(1, round(logs.get('nonfinite', 1.0) * steps_in_interval))
  first = step - bad + 1
  raise NonFiniteError(f'the loss or gradient norm became NaN/inf at step {first} '
                       f'({bad} of the last {steps_in_interval} steps); lower the learning rate, '
                       "clip gradients, or set nan_policy 'skip' or 'rollback'", first)


def fit(state, train_step: Callable, train_data, *, batch_size: int,
        num_epochs: int | None = None, num_steps: int | None = None,
        eval_step: Callable | None = None, eval_data=None, eval_every_steps: int | None = None,
        eval_batch_size: int | None = None, log_every_steps: int = 100,
        steps_per_dispatch: int = 1, callbacks: Sequence[Callback] = (), writer=None,
        progress: bool = True, data_rng: jax.Array | None = None, donate: bool = True,
        mesh: Mesh | None = None, batch_axes: Sequence[str] | None = None,
        checkpointer=None, nan_policy: str = 'stop'):
  """Trains until `num_steps` (or `num_epochs` epochs) in total; returns (state, History).

  train_data / eval_data: (inputs (N, ...), labels (N, ...)) host arrays, this
  process's part in a multi-process run; placed once on the devices of `mesh`
  (default: one device), split over `batch_axes` (default: 'data' and 'fsdp').
  `batch_size` is global. train_step(state, batch) -> (state, metrics) is pure;
  fit jits it once with the state's shardings and donation, running
  `steps_per_dispatch` steps per call, and syncs with the host only every
  `log_every_steps`. Evaluation runs every `eval_every_steps` (default: each
  epoch) and at the end. Resumes from `state.step`: the data position is a
  function of the step, so nothing is replayed.

  checkpointer: a `jaxmodels.checkpoint.Checkpointer`; fit saves when its policy
  says so (with the eval metrics, for keep-best), at the end, and on SIGTERM /
  SIGINT, after which it raises `Preempted`. nan_policy: 'stop' raises
  NonFiniteError naming the step; 'skip' drops non-finite updates
  (`skip_nonfinite`); 'rollback' raises too, for the caller to restore the last
  checkpoint with a lower learning rate (see `tasks.common.fit_with_rollback`).
  """
  if nan_policy not in NAN_POLICIES:
    raise InputError(f'nan_policy must be one of {", ".join(NAN_POLICIES)}, got {nan_policy!r}')
  if nan_policy == 'skip':
    train_step = skip_nonfinite(train_step)
  mesh = mesh or single_device_mesh()
  axes = _batch_axes(mesh, batch_axes)
  if batch_size <= 0:
    raise InputError(f'batch_size must be > 0, got {batch_size}')
  if (num_steps is None) == (num_epochs is None):
    raise InputError('pass exactly one of num_steps and num_epochs')
  state = _place_state(state, mesh)
  inputs, labels = shard_examples(mesh, axes, *train_data)
  shard_size = inputs.shape[0] // num_shards(mesh, axes)
  steps_per_epoch = shard_size // per_shard_batch(mesh, axes, batch_size)
  if steps_per_epoch == 0:
    raise InputError(f'batch_size {batch_size} is larger than the training set '
                     f'({inputs.shape[0]} examples)')
  total_steps = num_steps if num_steps is not None else num_epochs * steps_per_epoch
  eval_every = eval_every_steps or steps_per_epoch
  save_every = getattr(checkpointer, 'save_every_steps', 0) or total_steps
  data_rng = jax.random.PRNGKey(0) if data_rng is None else data_rng

  if eval_step is not None:
    if eval_data is None:
      raise InputError('eval_step was given without eval_data')
    evaluate = Evaluator(eval_step, *eval_data, eval_batch_size or batch_size, mesh, axes)

  step = int(state.step)
  epoch, position = divmod(step, steps_per_epoch)
  indices_for_epoch = jax.jit(epoch_batch_indices, static_argnums=(2, 3, 4, 5))
  new_epoch = lambda epoch: indices_for_epoch(data_rng, epoch, mesh, axes, shard_size, batch_size)
  batch_indices = new_epoch(epoch)
  arrays = {'inputs': inputs, 'labels': labels}
  _check_batch_fits(train_step, state, take_batch(arrays, batch_indices[0], mesh, axes))
  runner = _StepRunner(train_step, state, arrays, batch_indices, mesh, axes, donate)
  history = History()
  for cb in callbacks:
    cb.on_fit_start(state)

  bar = tqdm(total=total_steps, initial=step, unit='step', dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0)
  rate = _Rate(runner)
  pending, steps_since = None, 0

  def record(rows, prefix, logs):
    rows.append({'step': step, 'epoch': step / steps_per_epoch, **logs})
    if writer is not None:
      writer.write_scalars(step, {f'{prefix}/{k}': v for k, v in logs.items()})

  try:
    with PreemptionGuard() as guard:
      while step < total_steps and not any(cb.stop_training for cb in callbacks):
        if position == steps_per_epoch:
          epoch, position = epoch + 1, 0
          batch_indices = new_epoch(epoch)
        # Every boundary is a multiple of something absolute, so a resumed run
        # dispatches exactly the same programs as an uninterrupted one.
        k = min(steps_per_dispatch - step % steps_per_dispatch, steps_per_epoch - position,
                total_steps - step, log_every_steps - step % log_every_steps,
                eval_every - step % eval_every, save_every - step % save_every)
        # A short stretch (up to a log, eval or epoch boundary) runs as single steps, so
        # only two programs are ever compiled: k = steps_per_dispatch and k = 1.
        calls, size = (1, k) if k == steps_per_dispatch else (k, 1)
        metrics = None
        for i in range(calls):
          state, step_metrics = runner(size, state, arrays, batch_indices, position + i)
          metrics = step_metrics if metrics is None else merge(metrics, step_metrics)
        pending = metrics if pending is None else merge(pending, metrics)
        step, position, steps_since = step + k, position + k, steps_since + k
        rate.add(k * batch_size)
        bar.update(k)

        if step % log_every_steps == 0 or step == total_steps:
          logs = _scalars(pending)  # The host sync.
          _check_finite(logs, step, steps_since)
          logs['images_per_sec'] = rate.take(history)
          pending, steps_since = None, 0
          record(history.train, 'train', logs)
          for cb in callbacks:
            cb.on_train_log(step, logs, state)
          bar.set_postfix(loss=f'{logs["loss"]:.4f}', acc=f'{logs.get("accuracy", float("nan")):.4f}',
                          img_s=f'{logs["images_per_sec"]:.0f}', refresh=False)

        eval_logs = None
        if eval_step is not None and (step % eval_every == 0 or step == total_steps):
          eval_logs = _scalars(evaluate(state))
          record(history.eval, 'eval', eval_logs)
          for cb in callbacks:
            cb.on_eval_end(step, eval_logs, state)
          if jax.process_index() == 0:
            bar.write(f'step {step}: ' + ', '.join(f'eval_{k}={v:.4f}' for k, v in eval_logs.items()))
          rate.restart()  # Evaluation time is not training time.

        preempted = guard.requested or (checkpointer is not None and
                                        checkpointer.reached_preemption(step))
        if checkpointer is not None and (preempted or step == total_steps or
                                         checkpointer.should_save(step)):
          if pending is not None:  # Name the first bad step rather than fail on saving NaN.
            _check_finite(_scalars(pending), step, steps_since)
          checkpointer.save(step, state, meta=_position_meta(step, steps_per_epoch),
                            metrics=eval_logs, force=True)
        if preempted:
          raise Preempted(step)
  finally:
    bar.close()
    if checkpointer is not None:  # Whatever stops the loop, saves in flight reach the disk.
      checkpointer.wait()

  history.compile_seconds = runner.compile_seconds
  history.flops_per_step = runner.flops_per_step
  for cb in callbacks:
    state = cb.on_fit_end(state, history) or state
  return state, history
