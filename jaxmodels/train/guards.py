"""Guards around training: NaN/inf handling inside the step, and signals turned into a
clean stop at a step boundary."""
import dataclasses
import signal
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxmodels.train.metrics import Mean

NAN_POLICIES = ('stop', 'skip', 'rollback')


@dataclasses.dataclass(frozen=True, eq=False)
class SkipNonfinite:
  """`train_step` whose update is dropped when its loss or gradient norm is NaN/inf; see
  `skip_nonfinite`."""
  __name__ = 'train_step'  # jit names its program after it (jit_train_step).
  train_step: Callable

  def __call__(self, state, batch):
    new_state, metrics = self.train_step(state, batch)
    ok = jnp.isfinite(metrics['loss'].total) & jnp.isfinite(metrics['grad_norm'].total)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = new_state.replace(params=keep(new_state.params, state.params),
                                  opt_state=keep(new_state.opt_state, state.opt_state),
                                  model_state=keep(new_state.model_state, state.model_state))
    nonfinite = metrics['nonfinite']
    metrics = jax.tree.map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), metrics)
    metrics['nonfinite'] = nonfinite
    return new_state, metrics


def skip_nonfinite(train_step: Callable) -> SkipNonfinite:
  """Wraps a train step: when its loss or gradient norm is NaN/inf, the update is dropped.

  The step counter still advances (the batch is consumed); params, optimiser
  state and model state stay as they were; the step's metrics are zeroed except
  'nonfinite', so logged means cover the good steps only.
  """
  return SkipNonfinite(train_step)


class PreemptionGuard:
  """While active, SIGTERM and SIGINT set `requested` instead of killing the process.

  `fit` checks the flag at step boundaries, saves and stops cleanly. A second
  SIGINT raises KeyboardInterrupt at once. Only the main thread of a
  single-process run installs handlers: multi-process runs rely on JAX's
  preemption sync point, whose own SIGTERM handler must stay in place.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


def nonfinite_metric(loss, grad_norm) -> Mean:
  """1 for a step whose loss or gradient norm is NaN/inf, as a mergeable mean."""
  return Mean.of(1.0 - (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32))
