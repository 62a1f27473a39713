"""`fit`: a pure train step run over device-resident data, with callbacks for everything else
(evaluation, checkpoints, early stopping, NaN checks, logs) and a progress bar."""
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxmodels import parallel
from jaxmodels.errors import InputError
from jaxmodels.train import cpu_path
from jaxmodels.train.callbacks import Callback
from jaxmodels.train.dispatch import StepRunner
from jaxmodels.train.evaluate import as_sharded, scalar_logs
from jaxmodels.train.metrics import merge


@dataclasses.dataclass
class History:
  """Rows of logged values: {'step', 'epoch', metric: float, ...} per log / eval."""
  train: list = dataclasses.field(default_factory=list)
  eval: list = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0
  flops_per_step: float | None = None  # XLA's count for the compiled step, all devices.
  train_seconds: float = 0.0  # Excludes compilation and callbacks (evaluation, saving).
  train_examples: int = 0
  dispatch_sizes: tuple = ()  # The compiled programs: steps per dispatch.

  @property
  def examples_per_sec(self) -> float:
    return self.train_examples / max(self.train_seconds, 1e-9)

  def series(self, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in getattr(self, split) if key in r]
    return np.array([r['step'] for r in rows]), np.array([r[key] for r in rows])


@dataclasses.dataclass
class FitLoop:
  """What callbacks see of a running `fit` (passed to `on_fit_start`)."""
  history: History
  callbacks: list
  mesh: Mesh
  batch_size: int
  steps_per_epoch: int
  total_steps: int

  @property
  def stop_requested(self) -> bool:
    return any(cb.stop_training for cb in self.callbacks)

  def position(self, step: int) -> dict:
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    return {'step': step, 'epoch': epoch, 'step_in_epoch': step_in_epoch}

  def record(self, split: str, step: int, logs: dict, state) -> None:
    """Adds a 'train' or 'eval' row to the history and passes it to every callback."""
    getattr(self.history, split).append({'step': step, 'epoch': step / self.steps_per_epoch,
                                         **logs})
    for cb in self.callbacks:
      (cb.on_train_log if split == 'train' else cb.on_eval_end)(step, logs, state)


def fit(state, train_step: Callable, train_data, *, batch_size: int,
        num_steps: int | None = None, num_epochs: float | None = None,
        callbacks: Sequence[Callback] = (), mesh: Mesh | None = None,
        data_rng: jax.Array | None = None, steps_per_dispatch: int | None = None,
        log_every_steps: int = 100, progress: bool = True):
  """Trains until `num_steps` (or `num_epochs` epochs) in total; returns (state, History).

  train_data: (inputs (N, ...), labels (N, ...)) host arrays, this process's part
  in a multi-process run, placed once on the devices of `mesh` (default: one
  device) and split over its batch axes; or a `data.ShardedExamples` already
  there. `batch_size` is global. train_step(state, batch) -> (state, metrics) is
  pure; fit runs it through `cpu_path.tuned` (the CPU speed path, on CPU), jits it once
  with the state's shardings, donates the state (do not reuse the one you pass in), runs
  `steps_per_dispatch` steps per call (default `cpu_path.auto_steps_per_dispatch`) and syncs
  with the host only every `log_every_steps`, when it logs 'loss' and the other
  metrics plus 'examples_per_sec'. Resumes from `state.step`: the data position is
  a function of the step, so nothing is replayed. Everything else is a callback:
  `Evaluate`, `checkpoint.Checkpoint`, `EarlyStopping`, `TerminateOnNaN`, `LogWriter`.
  """
  if (num_steps is None) == (num_epochs is None):
    raise InputError('pass exactly one of num_steps and num_epochs')
  mesh = mesh or parallel.single_device_mesh()
  data = as_sharded(train_data, mesh)
  steps_per_epoch = data.steps_per_epoch(batch_size)  # DataError for a batch that cannot work.
  total = num_steps if num_steps is not None else round(num_epochs * steps_per_epoch)
  callbacks = sorted(callbacks, key=lambda cb: cb.order)
  loop = FitLoop(History(), callbacks, mesh, batch_size, steps_per_epoch, total)
  state = parallel.place_state(state, mesh)
  steps_per_dispatch = steps_per_dispatch or cpu_path.auto_steps_per_dispatch(batch_size, mesh)
  plan = cpu_path.execution(mesh)
  runner = StepRunner(cpu_path.tuned(train_step, mesh), state, data, batch_size,
                      jax.random.PRNGKey(0) if data_rng is None else data_rng,
                      unroll=plan.unroll, host_fed_single_steps=plan.host_fed_single_steps)
  step = int(state.step)
  bar = tqdm(total=total, initial=step, unit='step', dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0)
  clock = _TrainClock()
  pending = None
  try:
    for cb in callbacks:
      cb.on_fit_start(loop, state)
    boundaries = [steps_per_dispatch, steps_per_epoch, log_every_steps] + [
        cb.every_steps for cb in callbacks if cb.every_steps]
    needed = {1} if any(n % steps_per_dispatch for n in (*boundaries, total, step)) else set()
    if steps_per_dispatch <= min(steps_per_epoch, total - step):
      needed.add(steps_per_dispatch)
    if step < total:
      runner.compile(needed)  # Together, before the first step (see StepRunner.compile).
    while step < total and not loop.stop_requested:
      # Every boundary is a multiple of something absolute, so a resumed run dispatches
      # exactly the programs of an uninterrupted one. A stretch shorter than
      # steps_per_dispatch runs as single steps: only two programs are ever compiled.
      k = min(total - step, *(b - step % b for b in boundaries))
      calls, size = (1, k) if k == steps_per_dispatch else (k, 1)
      epoch, position = divmod(step, steps_per_epoch)
      for i in range(calls):
        state, metrics = runner.run(state, epoch, position + i, size)
        pending = metrics if pending is None else _merge(pending, metrics)
      step += k
      bar.update(k)
      clock.add(k * batch_size)
      if step % log_every_steps == 0 or step == total:
        logs = scalar_logs(pending)  # The host sync.
        pending = None
        logs['examples_per_sec'] = clock.take(loop.history, runner.compile_seconds)
        bar.set_postfix(loss=f'{logs.get("loss", np.nan):.4f}', ex_s=f'{logs["examples_per_sec"]:.0f}',
                        refresh=False)
        loop.record('train', step, logs, state)
      if any(cb.every_steps and step % cb.every_steps == 0 for cb in callbacks):
        jax.block_until_ready(state)  # Training time stays out of the callbacks' time.
      with clock.paused():
        for cb in callbacks:
          cb.on_steps_end(step, state)
  finally:
    bar.close()
    for cb in callbacks:
      cb.on_fit_exit()
  loop.history.compile_seconds = runner.compile_seconds
  loop.history.flops_per_step = runner.flops_per_step
  loop.history.dispatch_sizes = runner.dispatch_sizes
  for cb in callbacks:
    state = cb.on_fit_end(state, loop.history) or state
  return state, loop.history


_merge = jax.jit(merge)  # One dispatch for every metric leaf, not one per leaf.


class _TrainClock:
  """Training seconds and examples between host syncs, less compilation and callback time."""

  def __init__(self):
    self._start, self._paused, self._compiled, self._examples = time.perf_counter(), 0.0, 0.0, 0

  def add(self, examples: int):
    self._examples += examples

  @contextlib.contextmanager
  def paused(self):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  def take(self, history: History, compile_seconds: float) -> float:
    """Examples/s since the last take; adds the interval to the history's totals."""
    now = time.perf_counter()
    elapsed = max(now - self._start - self._paused - (compile_seconds - self._compiled), 1e-9)
    history.train_seconds += elapsed
    history.train_examples += self._examples
    rate = self._examples / elapsed
    self._start, self._paused, self._compiled, self._examples = now, 0.0, compile_seconds, 0
    return rate
