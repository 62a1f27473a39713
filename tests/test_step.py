"""The pure train step: one code path for Linen, NNX and plain-function models;
dropout and batch-norm state; determinism; overfitting a tiny batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxmodels as jm
from jaxmodels.models import SmallCNN, ThreeConvCNN


def _batch(n=32, shape=(8, 8, 1), classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': jnp.asarray(rng.normal(size=(n, *shape)), jnp.float32),
          'labels': jnp.asarray(rng.integers(0, classes, n), jnp.int32)}


def _run(model, batch, steps=5, tx=None, seed=0):
  tx = tx or optax.sgd(0.1, momentum=0.9)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(seed), batch['inputs'])
  model = jm.as_model(model)
  step = jax.jit(jm.make_train_step(model.apply, jm.classification_loss(), tx,
                                    jm.classification_metrics(4)))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(jm.summarize(metrics)['loss'])
  return state, np.array(losses)


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.relu(nn.Dense(16, name='hidden')(x.reshape(x.shape[0], -1)))
    return nn.Dense(4, name='out')(x)


class NnxMLP(nnx.Module):
  def __init__(self, params):
    self.hidden = nnx.Linear(64, 16, rngs=nnx.Rngs(0))
    self.out = nnx.Linear(16, 4, rngs=nnx.Rngs(0))
    for layer in ('hidden', 'out'):  # Same weights as the Linen model.
      getattr(self, layer).kernel[...] = params[layer]['kernel']
      getattr(self, layer).bias[...] = params[layer]['bias']

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


def test_same_step_trains_linen_nnx_and_plain_function_models_identically():
  batch = _batch()
  linen = LinenMLP()
  init_params = jm.create_train_state(linen, optax.sgd(0.1), jax.random.PRNGKey(0),
                                     batch['inputs']).params

  def plain_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p['hidden']['kernel'] + p['hidden']['bias'])
    return h @ p['out']['kernel'] + p['out']['bias']

  plain = jm.function_model(lambda rng, x: init_params, plain_apply)
  linen_state, linen_losses = _run(jm.linen_model(linen), batch)
  plain_state, plain_losses = _run(plain, batch)
  nnx_state, nnx_losses = _run(NnxMLP(init_params), batch)

  assert linen_losses[-1] < linen_losses[0]  # It trains.
  np.testing.assert_allclose(plain_losses, linen_losses, rtol=1e-6)
  np.testing.assert_allclose(nnx_losses, linen_losses, rtol=1e-6)
  for layer in ('hidden', 'out'):
    np.testing.assert_allclose(nnx_state.params[layer]['kernel'][...],
                               linen_state.params[layer]['kernel'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain_state.params[layer]['kernel'],
                               linen_state.params[layer]['kernel'], rtol=1e-5, atol=1e-6)


def test_same_seed_gives_same_bits_and_another_seed_does_not():
  batch = _batch()
  model = ThreeConvCNN(num_classes=4, widths=(8, 8), dense=16, dropout=0.3, batch_norm=True)
  a, _ = _run(model, batch, tx=optax.adam(1e-3))
  b, _ = _run(model, batch, tx=optax.adam(1e-3))
  c, _ = _run(model, batch, tx=optax.adam(1e-3), seed=1)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.params['Dense_0']['kernel'], c.params['Dense_0']['kernel'])


def test_batch_norm_statistics_update_in_training_only():
  batch = _batch()
  model = jm.linen_model(ThreeConvCNN(num_classes=4, widths=(8,), dense=16, batch_norm=True))
  tx = optax.sgd(0.0)  # Params fixed: only the running statistics can move.
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'])
  before = state.model_state['batch_stats']['BatchNorm_0']['mean']
  new_state, _ = jax.jit(jm.make_train_step(model.apply, jm.classification_loss(), tx))(state, batch)
  after = new_state.model_state['batch_stats']['BatchNorm_0']['mean']
  assert not np.allclose(before, after)
  # Eval mode uses, and leaves, the running statistics.
  outputs, eval_state = model.apply({'params': state.params, **new_state.model_state},
                                    batch['inputs'], train=False)
  np.testing.assert_array_equal(eval_state['batch_stats']['BatchNorm_0']['mean'], after)


def test_dropout_draws_a_new_mask_each_step_and_none_in_eval():
  batch = _batch(n=4)
  model = jm.linen_model(ThreeConvCNN(num_classes=4, widths=(8,), dense=16, dropout=0.5))
  state = jm.create_train_state(model, optax.sgd(0.0), jax.random.PRNGKey(0), batch['inputs'])
  variables = {'params': state.params}
  train_out = lambda s: model.apply(variables, batch['inputs'], train=True,
                                    rngs=jm.step_rngs(s, 'dropout'))[0]
  first, second = train_out(state), train_out(state.replace(step=state.step + 1))
  assert not np.allclose(first, second)
  eval_a = model.apply(variables, batch['inputs'], train=False)[0]
  eval_b = model.apply(variables, batch['inputs'], train=False)[0]
  np.testing.assert_array_equal(eval_a, eval_b)


def test_overfits_a_tiny_batch():
  batch = _batch(n=16, shape=(12, 12, 1), classes=4, seed=3)
  state, losses = _run(SmallCNN(num_classes=4), batch, steps=60, tx=optax.adam(3e-3))
  logits, _ = jm.as_model(SmallCNN(num_classes=4)).apply({'params': state.params}, batch['inputs'],
                                                          train=False)
  assert losses[-1] < 0.02 * losses[0]
  np.testing.assert_array_equal(np.argmax(logits, -1), batch['labels'])


def test_padding_mask_gives_the_unpadded_gradient():
  batch = _batch(n=8)
  padded = {'inputs': jnp.concatenate([batch['inputs'], 100 * batch['inputs'][:3]]),
            'labels': jnp.concatenate([batch['labels'], batch['labels'][:3]]),
            'mask': jnp.array([1.0] * 8 + [0.0] * 3)}
  a, _ = _run(LinenMLP(), batch, steps=2)
  b, _ = _run(LinenMLP(), padded, steps=2)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_wrong_input_shape_is_caught_before_training():
  batch = _batch(shape=(8, 8, 1))
  state = jm.create_train_state(SmallCNN(num_classes=4), optax.sgd(0.1), jax.random.PRNGKey(0),
                                batch['inputs'])
  model = jm.as_model(SmallCNN(num_classes=4))
  step = jm.make_train_step(model.apply, jm.classification_loss(), optax.sgd(0.1))
  wrong = np.zeros((32, 10, 10, 1), np.float32)
  with pytest.raises(jm.InputError, match=r'10, 10, 1\)'):
    jm.fit(state, step, (wrong, np.zeros(32, np.int32)), batch_size=8, num_steps=1, progress=False)
