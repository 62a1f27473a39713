"""Checkpoints: restore onto other device counts, refusal of another model or config,
fallback from a corrupt checkpoint, params-only init, and never saving NaN."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.checkpoint import Checkpointer, read_params, restore_or_init
from jaxmodels.models import MLP

WORKER = pathlib.Path(__file__).with_name('checkpoint_worker.py')
RESUMABLE = lambda key: key == 'train.num_steps'  # noqa: E731 - a run's length may change.


@pytest.mark.parametrize('saved_on, restored_on', [(8, 1), (1, 8)])
def test_restore_onto_another_device_count(tmp_path, saved_on, restored_on):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  for mode, devices in (('save', saved_on), ('restore', restored_on)):
    result = subprocess.run([sys.executable, str(WORKER), mode, str(devices), str(tmp_path / 'ck'),
                             str(tmp_path / 'params.npz')], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'ok {mode} {devices}' in result.stdout


def _setup(hidden=(16,), seed=0):
  model = jm.linen_model(MLP(hidden=hidden))
  tx = optax.adam(1e-2)
  init = lambda r: jm.create_train_state(model, tx, r, jnp.zeros((1, 4)))
  return init, jax.jit(init)(jax.random.PRNGKey(seed))


def _save(directory, state, steps, config=None):
  checkpointer = Checkpointer(str(directory), config=config, save_every_steps=1, keep_last=5,
                              resumable=RESUMABLE)
  for step in steps:
    assert checkpointer.save(step, state.replace(step=jnp.int32(step)))
  checkpointer.wait()
  return checkpointer


def test_resume_restores_the_newest_checkpoint_exactly(tmp_path):
  init, state = _setup()
  _save(tmp_path, state, [2, 4])
  restored, meta = restore_or_init(Checkpointer(str(tmp_path)), init, jax.random.PRNGKey(9))
  assert int(restored.step) == 4 and meta['config'] == {}
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)


def test_keep_last_and_keep_best(tmp_path):
  _, state = _setup()
  checkpointer = Checkpointer(str(tmp_path), save_every_steps=1, keep_last=2, keep_best=1,
                              best_metric='accuracy')
  for step, accuracy in ((1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)):
    checkpointer.save(step, state, metrics={'accuracy': accuracy})
  checkpointer.wait()
  assert Checkpointer(str(tmp_path)).steps == [2, 4, 5]  # Best (2) plus the last two.


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  init, state = _setup()
  _save(tmp_path, state, [3, 6])
  for path in (tmp_path / '6' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'\0garbage')  # Every file of step 6's state, truncated and overwritten.
  restored, _ = restore_or_init(Checkpointer(str(tmp_path)), init, jax.random.PRNGKey(0))
  assert int(restored.step) == 3
  assert 'checkpoint step 6' in capsys.readouterr().out
  assert (tmp_path / 'unreadable-6').is_dir() and not (tmp_path / '6').exists()
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)


def test_every_process_waits_for_a_corrupt_checkpoint_to_be_set_aside(tmp_path, monkeypatch):
  """Process 0 renames; the barrier comes after the rename and before the directory is
  reopened, so no process can see the corrupt step once it has been set aside."""
  init, state = _setup()
  _save(tmp_path, state, [3, 6])
  for path in (tmp_path / '6' / 'state').rglob('*'):
    if path.is_file():
      path.write_bytes(b'\0garbage')
  barriers = []
  monkeypatch.setattr(jm.checkpoint, 'sync_processes', lambda name: barriers.append(
      (name, (tmp_path / 'unreadable-6').is_dir())))
  restored, _ = restore_or_init(Checkpointer(str(tmp_path)), init, jax.random.PRNGKey(0))
  assert int(restored.step) == 3
  assert barriers == [('jaxmodels: checkpoint 6 set aside', True)]


def test_checkpoint_of_another_model_is_refused_with_the_mismatch(tmp_path):
  _, state = _setup(hidden=(16,))
  _save(tmp_path, state, [1])
  other_init, _ = _setup(hidden=(32,))
  with pytest.raises(jm.CheckpointError, match=r'Dense_0/bias is \(16,\) there, \(32,\) here'):
    restore_or_init(Checkpointer(str(tmp_path)), other_init, jax.random.PRNGKey(0))


def test_checkpoint_of_another_config_is_refused_unless_forced(tmp_path):
  init, state = _setup()
  _save(tmp_path, state, [1], config={'model': {'name': 'mlp'}, 'train': {'num_steps': 10}})
  # Changing only the length of the run is a resume, not another run.
  longer = {'model': {'name': 'mlp'}, 'train': {'num_steps': 20}}
  assert restore_or_init(Checkpointer(str(tmp_path), config=longer, resumable=RESUMABLE), init,
                         jax.random.PRNGKey(0))[1] is not None
  other = {'model': {'name': 'small_cnn'}, 'train': {'num_steps': 10}}
  with pytest.raises(jm.CheckpointError, match=r"model.name: 'mlp' -> 'small_cnn'.*resume=force"):
    restore_or_init(Checkpointer(str(tmp_path), config=other, resumable=RESUMABLE), init,
                    jax.random.PRNGKey(0))
  forced = Checkpointer(str(tmp_path), config=other, resumable=RESUMABLE, resume='force')
  assert int(restore_or_init(forced, init, jax.random.PRNGKey(0))[0].step) == 1


def test_a_non_finite_state_is_never_saved(tmp_path):
  _, state = _setup()
  checkpointer = _save(tmp_path, state, [1])
  poisoned = state.replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.nan), state.params))
  with pytest.raises(jm.NonFiniteError, match='not saved.*last good checkpoint is step 1'):
    checkpointer.save(2, poisoned, force=True)
  checkpointer.wait()
  assert Checkpointer(str(tmp_path)).steps == [1]


def test_read_params_and_restore_params_for_fine_tuning(tmp_path):
  _, state = _setup()
  _save(tmp_path, state, [5])
  params = read_params(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))
  abstract = jax.eval_shape(lambda: state.params)
  restored = Checkpointer(str(tmp_path)).restore_params(abstract)
  jax.tree.map(np.testing.assert_array_equal, restored, state.params)
