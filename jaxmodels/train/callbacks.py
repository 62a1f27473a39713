"""Hooks into `fit`. Cross-cutting behaviour (evaluation, checkpoints, early stopping, NaN
checks, logging) is a callback, not a flag on `fit`: pass the ones you want.

fit calls, in order of `Callback.order` (then list order):
  on_fit_start(loop, state)       once; `loop` is the running `FitLoop`
  on_train_log(step, logs, state) every `log_every_steps` (the host sync)
  on_steps_end(step, state)       after every dispatch; fit ends a dispatch at each
                                  multiple of `every_steps`, so those steps are seen exactly
  on_eval_end(step, logs, state)  whenever an evaluation is recorded
  on_fit_end(state, history)      once, after the loop; may return a replacement state
  on_fit_exit()                   always, also on error: release what on_fit_start took
Set `stop_training` to end the loop after the current dispatch.
"""
import math

import jax
import numpy as np

from jaxmodels.errors import NonFiniteError


class Callback:
  """Base class; every method is optional."""
  every_steps: int = 0
  order: int = 0  # Lower runs first: evaluation (-1) before everything, checkpoints (1) last.
  stop_training: bool = False

  def on_fit_start(self, loop, state):
    pass

  def on_train_log(self, step: int, logs: dict, state):
    pass

  def on_steps_end(self, step: int, state):
    pass

  def on_eval_end(self, step: int, logs: dict, state):
    pass

  def on_fit_end(self, state, history):
    """May return a replacement state (e.g. the best one seen)."""
    return None

  def on_fit_exit(self):
    pass


class LambdaCallback(Callback):
  """A callback from plain functions, e.g. `LambdaCallback(on_eval_end=lambda step, logs, state: ...)`."""

  def __init__(self, **hooks):
    for name, fn in hooks.items():
      if not name.startswith('on_') or not hasattr(Callback, name):
        raise TypeError(f'LambdaCallback has no hook {name!r}')
      setattr(self, name, fn)


class EarlyStopping(Callback):
  """Stops when eval metric `monitor` has not improved by `min_delta` for `patience` evals.

  With `restore_best`, `fit` returns the state of the best evaluation (a copy kept on
  the devices).
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


class TerminateOnNaN(Callback):
  """Raises NonFiniteError, naming the first bad step, when a logged loss or gradient norm
  is NaN/inf. The train step's 'nonfinite' metric (the share of bad steps) dates it."""

  def on_fit_start(self, loop, state):
    self._last_step = int(state.step)

  def on_train_log(self, step, logs, state):
    steps, self._last_step = step - self._last_step, step
    if np.isfinite(logs['loss']) and np.isfinite(logs.get('grad_norm', 0.0)):
      return
    # NaN in the params persists, so the bad steps are the last ones of the interval.
    bad = max(1, round(logs.get('nonfinite', 1.0) * steps))
    first = step - bad + 1
    raise NonFiniteError(f'the loss or gradient norm became NaN/inf at step {first} ({bad} of '
                         f'the last {steps} steps); lower the learning rate, clip gradients, '
                         'or skip or roll back such steps (nan.policy)', first)


class LogWriter(Callback):
  """Writes train and eval logs to a writer (`report.create_writer`: TensorBoard + JSONL) as
  'train/<name>' and 'eval/<name>'. tokens_per_example adds 'tokens_per_sec' to train logs."""

  def __init__(self, writer, tokens_per_example: int | None = None):
    self.writer, self._tokens = writer, tokens_per_example

  def on_train_log(self, step, logs, state):
    if self._tokens and 'examples_per_sec' in logs:
      logs['tokens_per_sec'] = logs['examples_per_sec'] * self._tokens
    self.writer.write_scalars(step, {f'train/{k}': v for k, v in logs.items()})

  def on_eval_end(self, step, logs, state):
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in logs.items()})
