"""A run is never lost: SIGKILL and SIGTERM at random steps resume to the same bits, and
each NaN policy (stop, skip, rollback) does what it says."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.checkpoint import Checkpoint, Checkpointer
from jaxmodels.models import ThreeConvCNN

KILL_RESUME = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks' / 'kill_resume.py'


@pytest.mark.slow
@pytest.mark.parametrize('signal_name, kills', [('KILL', 5), ('TERM', 2)])
def test_interrupted_runs_resume_to_the_same_bits(tmp_path, signal_name, kills):
  result = subprocess.run([sys.executable, str(KILL_RESUME), '--kills', str(kills), '--signal',
                           signal_name, '--seed', '1', '--workdir', str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.count(f'SIG{signal_name} at step') == kills
  if signal_name == 'TERM':
    assert result.stdout.count('(exit code 75)') == kills
  assert 'bit-identical to the uninterrupted run: True' in result.stdout
  assert 'leftover checkpoint directories: none' in result.stdout


BAD_STEP = 6


def _poison(train_step, only_at_full_learning_rate=False):
  """The update that takes state.step from BAD_STEP to BAD_STEP + 1 sees NaN inputs."""

  def step(state, batch):
    bad = state.step == BAD_STEP
    if only_at_full_learning_rate:
      bad &= jm.train.lr_multiplier_value(state.opt_state) == 1.0
    return train_step(state, {**batch, 'inputs': jnp.where(bad, jnp.nan, batch['inputs'])})

  return step


def _problem(tmp_path):
  rng = np.random.default_rng(0)
  data = (rng.normal(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64).astype(np.int32))
  model = jm.linen_model(ThreeConvCNN(widths=(8,), dense=16))
  tx = jm.train.with_lr_multiplier(optax.adam(1e-2))
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), data[0][:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx, jm.classification_metrics(10))
  checkpointer = Checkpointer(str(tmp_path / 'ck'), save_every_steps=2, keep_last=10)
  kw = dict(batch_size=16, progress=False, log_every_steps=4,
            callbacks=[jm.TerminateOnNaN(), Checkpoint(checkpointer)])
  return state, step, data, checkpointer, kw


def test_nan_policy_stop_names_the_step_and_keeps_good_checkpoints(tmp_path):
  state, step, data, checkpointer, kw = _problem(tmp_path)
  # Steps 7 and 8 are bad; the log at 8 dates the first from the share of bad steps.
  with pytest.raises(jm.NonFiniteError, match=f'NaN/inf at step {BAD_STEP + 1} ') as error:
    jm.fit(state, _poison(step), data, num_steps=12, **kw)
  assert error.value.step == BAD_STEP + 1
  assert checkpointer.steps == [2, 4, 6]  # Nothing after the NaN was written.
  params = jm.checkpoint.read_params(checkpointer.directory, 6)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nan_policy_skip_drops_exactly_the_bad_update(tmp_path):
  state, step, data, checkpointer, kw = _problem(tmp_path)
  poisoned = jm.train.skip_nonfinite(_poison(step))
  before, _ = jm.fit(state, poisoned, data, num_steps=BAD_STEP, **kw)
  before_params = jax.device_get(before.params)
  after, history = jm.fit(before, poisoned, data, num_steps=BAD_STEP + 1, **kw)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before_params)
  assert int(after.step) == BAD_STEP + 1 and history.train[-1]['nonfinite'] == 1.0
  final, history = jm.fit(after, poisoned, data, num_steps=12, **kw)
  assert np.isfinite(history.train[-1]['loss']) and int(final.step) == 12


def test_nan_policy_rollback_restores_and_lowers_the_learning_rate(tmp_path, capsys):
  state, step, data, checkpointer, kw = _problem(tmp_path)
  poisoned = _poison(step, only_at_full_learning_rate=True)
  fit = lambda s: jm.fit(s, poisoned, data, num_steps=12, **kw)
  final, _ = jm.train.fit_with_rollback(fit, state, checkpointer, lr_factor=0.5, max_rollbacks=2)
  assert int(final.step) == 12
  assert jm.train.lr_multiplier(final.opt_state) == 0.5
  assert 'rolled back to step 6 with the learning rate x0.5' in capsys.readouterr().out
  # The lowered rate is part of the saved state, so a resume keeps it.
  restored, _ = jm.checkpoint.restore_or_init(
      Checkpointer(checkpointer.directory), lambda r: state, jax.random.PRNGKey(0))
  assert jm.train.lr_multiplier(restored.opt_state) == 0.5


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
  state, step, data, checkpointer, kw = _problem(tmp_path)
  fit = lambda s: jm.fit(s, _poison(step), data, num_steps=12, **kw)
  with pytest.raises(jm.NonFiniteError):
    jm.train.fit_with_rollback(fit, state, checkpointer, lr_factor=0.5, max_rollbacks=1)


def test_logged_learning_rate_follows_the_rollback_multiplier():
  """The logged rate is the one in effect: the schedule times the multiplier in the state."""
  model = jm.linen_model(ThreeConvCNN(widths=(8,), dense=16))
  schedule = lambda step: 0.1 * (step + 1)
  tx = jm.train.with_lr_multiplier(optax.sgd(schedule))
  batch = {'inputs': np.ones((4, 8, 8, 1), np.float32), 'labels': np.zeros(4, np.int32)}
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'][:1])
  step = jax.jit(jm.make_train_step(model.apply, jm.classification_loss(), tx, None, schedule))
  state = state.replace(opt_state=jm.train.set_lr_multiplier(state.opt_state, 0.25))
  _, metrics = step(state, batch)
  assert jm.summarize(metrics)['learning_rate'] == pytest.approx(0.1 * 0.25)
