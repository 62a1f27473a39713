"""Hooks into `fit`: override the methods you need. Set `stop_training` to stop."""
import math

import jax


class Callback:
  """Base class; every method is optional. `logs` maps metric name -> float."""
  stop_training: bool = False

  def on_fit_start(self, state):
    pass

  def on_train_log(self, step: int, logs: dict, state):
    pass

  def on_eval_end(self, step: int, logs: dict, state):
    pass

  def on_fit_end(self, state, history):
    """May return a replacement state (e.g. the best one seen)."""
    return None


class LambdaCallback(Callback):
  """Callback from plain functions, e.g. `LambdaCallback(on_eval_end=lambda step, logs, state: ...)`."""

  def __init__(self, on_fit_start=None, on_train_log=None, on_eval_end=None, on_fit_end=None):
    for name, fn in (('on_fit_start', on_fit_start), ('on_train_log', on_train_log),
                     ('on_eval_end', on_eval_end), ('on_fit_end', on_fit_end)):
      if fn is not None:
        setattr(self, name, fn)


class EarlyStopping(Callback):
  """Stops when eval metric `monitor` has not improved by `min_delta` for `patience` evals.

  With `restore_best`, `fit` returns the state of the best evaluation.
  """

  def __init__(self, monitor: str = 'loss', mode: str = 'min', patience: int = 3,
               min_delta: float = 0.0, restore_best: bool = True):
    if mode not in ('min', 'max'):
      raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
    self.monitor, self.patience, self.restore_best = monitor, patience, restore_best
    self._better = (lambda new, best: new < best - min_delta) if mode == 'min' else (
        lambda new, best: new > best + min_delta)
    self.best = math.inf if mode == 'min' else -math.inf
    self.best_step, self.best_state, self.wait = None, None, 0

  def on_eval_end(self, step, logs, state):
    if self.monitor not in logs:
      raise KeyError(f'EarlyStopping monitors {self.monitor!r}, but eval logs have {sorted(logs)}')
    if self._better(logs[self.monitor], self.best):
      self.best, self.best_step, self.wait = logs[self.monitor], step, 0
      if self.restore_best:
        # A copy: fit donates the live state's buffers to the next step.
        self.best_state = jax.tree.map(lambda x: x.copy(), state)
    else:
      self.wait += 1
      self.stop_training = self.wait >= self.patience

  def on_fit_end(self, state, history):
    return self.best_state if self.restore_best else None


