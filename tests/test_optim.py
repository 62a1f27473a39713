"""optax recipes: masked weight decay, schedules, clipping, sgd+momentum."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.models import ThreeConvCNN


def _params():
  model = ThreeConvCNN(num_classes=3, widths=(4,), dense=8, batch_norm=True)
  return model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)))['params']


@pytest.mark.parametrize('name', ['adamw', 'adam', 'sgd'])
def test_weight_decay_leaves_biases_and_norm_scales_alone(name):
  params = _params()
  tx = jm.make_optimizer(name, 0.1, weight_decay=0.5)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  for path, update in flat:
    name_ = jax.tree_util.keystr(path)
    if 'kernel' in name_:
      assert np.abs(update).max() > 0, f'{name_} should decay'
    else:  # bias, BatchNorm scale
      np.testing.assert_array_equal(update, 0, err_msg=f'{name_} must not decay')


def test_adamw_decay_is_decoupled_and_proportional_to_the_weight():
  params = {'kernel': jnp.array([[2.0, -4.0]]), 'bias': jnp.array([3.0])}
  tx = jm.make_optimizer('adamw', 0.1, weight_decay=0.01)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.1 * 0.01 * params['kernel'], rtol=1e-6)
  np.testing.assert_array_equal(updates['bias'], 0.0)


def test_warmup_cosine_schedule_values():
  schedule = jm.warmup_cosine(1.0, total_steps=110, warmup_steps=10)
  assert schedule(0) == pytest.approx(0.0)
  assert schedule(5) == pytest.approx(0.5)
  assert schedule(10) == pytest.approx(1.0)
  assert schedule(60) == pytest.approx(0.5 * (1 + np.cos(np.pi * 50 / 100)))
  assert schedule(110) == pytest.approx(0.0, abs=1e-7)


def test_one_cycle_rises_to_the_peak_then_anneals():
  schedule = jm.one_cycle(0.4, total_steps=100, pct_start=0.25)
  values = np.array([schedule(i) for i in range(101)])
  assert values[0] == pytest.approx(0.4 / 25)
  assert values.argmax() == 25 and values.max() == pytest.approx(0.4)
  assert values[-1] < 1e-5
  assert np.all(np.diff(values[:26]) > 0) and np.all(np.diff(values[25:]) < 0)


def test_global_norm_clipping():
  grads = {'a': jnp.full((10,), 3.0), 'b': jnp.full((5,), -4.0)}
  tx = jm.make_optimizer('sgd', 1.0, momentum=0.0, clip_norm=1.0)
  updates, _ = tx.update(grads, tx.init(grads))
  norm = np.sqrt(10 * 9 + 5 * 16)
  np.testing.assert_allclose(updates['a'], -3.0 / norm, rtol=1e-6)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-6)


def test_sgd_nesterov_momentum_matches_numpy():
  lr, mu = 0.1, 0.9
  tx = jm.make_optimizer('sgd', lr, momentum=mu)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  grads = [np.array([0.5, 1.0]), np.array([-1.0, 0.25]), np.array([0.3, 0.3])]
  velocity, expected = np.zeros(2), np.array([1.0, -2.0])
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
    velocity = mu * velocity + g
    expected = expected - lr * (g + mu * velocity)  # Nesterov form.
  np.testing.assert_allclose(params, expected, rtol=1e-6)


def test_bad_optimizer_settings_raise_config_error():
  with pytest.raises(jm.ConfigError, match='unknown optimizer'):
    jm.make_optimizer('adagradx', 0.1)
  with pytest.raises(jm.ConfigError, match='weight_decay'):
    jm.make_optimizer('adamw', 0.1, weight_decay=-1.0)
