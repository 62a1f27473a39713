"""NNX models on equal terms with Linen: an NNX CNN written as Flax's docs write it (rng
streams for dropout, batch norm, typed keys) trains through `fit`, survives a SIGKILL and
resumes to the same bits, evaluates like its Linen twin and reaches its accuracy."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmodels as jm
from jaxmodels.checkpoint import Checkpointer, read_variables
from jaxmodels.models.fast_path import rewrite_for_cpu
import nnx_digits  # Beside this file: the models, the recipe and the worker.
from nnx_digits import BATCH_SIZE, SAVE_EVERY, LinenCNN, NnxCNN, digits, flat_leaves, recipe

WORKER = pathlib.Path(__file__).with_name('nnx_digits.py')
NUM_STEPS = 300  # 13 epochs of 22 batches.
KILL_AT = 130


def _accuracy(state, eval_step, data) -> float:
  return float(jm.summarize(jm.make_evaluate_fn(eval_step, 512)(state, *data))['accuracy'])


def _worker(workdir, *args):
  result = subprocess.run([sys.executable, str(WORKER), str(workdir), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout + result.stderr[-3000:]


@pytest.mark.slow  # A whole training run in a subprocess: 25-40 s.
def test_nnx_cnn_resumes_bit_identically_after_sigkill_and_matches_its_linen_twin(tmp_path):
  _, test = digits()
  # Uninterrupted, in this process.
  nnx_state = nnx_digits.main(tmp_path / 'uninterrupted', NUM_STEPS)
  nnx_accuracy = _accuracy(nnx_state, recipe(NnxCNN(rngs=nnx.Rngs(0)))[2], test)
  init, train_step, eval_step = recipe(LinenCNN())
  linen_state, _ = jm.fit(init(jax.random.PRNGKey(1)), train_step, digits()[0],
                          batch_size=BATCH_SIZE, num_steps=NUM_STEPS, progress=False)
  linen_accuracy = _accuracy(linen_state, eval_step, test)
  print(f'test accuracy after {NUM_STEPS} steps: NNX {nnx_accuracy:.4f}, '
        f'Linen {linen_accuracy:.4f}')
  assert linen_accuracy >= 0.9 and nnx_accuracy >= 0.9
  assert nnx_accuracy >= linen_accuracy - 0.02

  # Killed with SIGKILL at KILL_AT (after the checkpoint at 100), then resumed in a new process.
  workdir = tmp_path / 'killed'
  code, output = _worker(workdir, NUM_STEPS, KILL_AT)
  assert code == -9, output
  assert Checkpointer(str(workdir / 'checkpoints')).steps == [SAVE_EVERY, 2 * SAVE_EVERY]
  left = read_variables(str(workdir / 'checkpoints'), 2 * SAVE_EVERY)
  reference = read_variables(str(tmp_path / 'uninterrupted' / 'checkpoints'), 2 * SAVE_EVERY)
  jax.tree.map(np.testing.assert_array_equal, left, reference)
  code, output = _worker(workdir, NUM_STEPS)
  assert code == 0, output
  assert f'resumed from step {2 * SAVE_EVERY}' in output
  resumed, uninterrupted = np.load(workdir / 'final.npz'), flat_leaves(nnx_state)
  assert sorted(resumed.files) == sorted(uninterrupted)
  assert any('batch_stats' in name for name in resumed.files)
  for name, value in uninterrupted.items():  # Params, batch stats, Adam moments, step, rng.
    np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_nnx_state_is_plain_arrays_laid_out_as_the_linen_twins():
  example = np.zeros((1, 8, 8, 1), np.float32)
  tx = optax.adam(1e-3)
  nnx_state = jm.create_train_state(NnxCNN(rngs=nnx.Rngs(0)), tx, jax.random.PRNGKey(0), example)
  linen_state = jm.create_train_state(LinenCNN(), tx, jax.random.PRNGKey(0), example)
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(nnx_state) == shapes(linen_state)
  assert set(nnx_state.model_state) == {'batch_stats'}  # No rng keys or counters in the state.
  for leaf in jax.tree.leaves(nnx_state):
    assert not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    np.asarray(leaf)  # What placement and checkpoints do with every leaf.


class TwoDropouts(nnx.Module):
  def __init__(self, rngs):
    self.first, self.second = nnx.Dropout(0.5, rngs=rngs), nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return jnp.stack([self.first(x), self.second(x)])


def test_nnx_dropout_draws_its_masks_from_the_step_keys():
  model = jm.as_model(TwoDropouts(nnx.Rngs(0)))  # A 'default' stream, as nnx.Rngs(0) makes.
  variables = model.init(jax.random.PRNGKey(0), None)
  apply = jax.jit(model.apply, static_argnames='train')
  ones = jnp.ones(256)
  masks = lambda key: apply(variables, ones, train=True, rngs={'dropout': key})[0]
  a, again, b = masks(jax.random.PRNGKey(1)), masks(jax.random.PRNGKey(1)), masks(
      jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, again)  # Same key, same masks: a resume redraws them.
  assert not np.array_equal(a, b)          # Another step's key, other masks.
  assert not np.array_equal(a[0], a[1])   # Each layer its own mask.
  assert 0.3 < float(jnp.mean(a == 0)) < 0.7
  np.testing.assert_array_equal(apply(variables, ones, train=False)[0], jnp.stack([ones, ones]))


def test_cpu_fast_path_keeps_an_nnx_models_outputs_gradients_and_batch_stats():
  model = jm.as_model(NnxCNN(rngs=nnx.Rngs(0)))
  variables = model.init(None, None)
  (images, labels), _ = digits()
  images, labels = images[:16], labels[:16]
  rngs = {'dropout': jax.random.PRNGKey(5)}

  def loss(apply, params):
    logits, model_state = apply({**variables, 'params': params}, images, train=True, rngs=rngs)
    return jnp.mean(jm.classification_loss()(logits, {'labels': labels})), (logits, model_state)

  plain = jax.value_and_grad(lambda p: loss(model.apply, p), has_aux=True)
  fast = jax.value_and_grad(lambda p: loss(rewrite_for_cpu(model.apply), p), has_aux=True)
  # The rewrite takes effect: no select-and-scatter left for the max-pools' gradient.
  program = lambda fn: str(jax.make_jaxpr(fn)(variables['params']))
  assert 'select_and_scatter_add' in program(plain)
  assert 'select_and_scatter_add' not in program(fast)
  expected, got = jax.jit(plain)(variables['params']), jax.jit(fast)(variables['params'])
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
