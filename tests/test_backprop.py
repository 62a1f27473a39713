"""jax.grad of a one-hidden-layer sigmoid network with BCE equals the textbook backprop."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import sigmoid_binary_cross_entropy


def test_grad_equals_hand_derived_backprop():
  rng = np.random.default_rng(0)
  n, d, h = 16, 5, 7
  x = rng.normal(size=(n, d))
  y = rng.integers(0, 2, size=(n, 1)).astype(np.float64)
  params = {'W1': rng.normal(size=(d, h)), 'b1': rng.normal(size=h),
            'W2': rng.normal(size=(h, 1)), 'b2': rng.normal(size=1)}

  def loss(p):
    z1 = x @ p['W1'] + p['b1']
    z2 = jax.nn.sigmoid(z1) @ p['W2'] + p['b2']
    # Summed (not averaged) BCE, so the formulas carry no 1/n.
    return jnp.sum(sigmoid_binary_cross_entropy(z2, y))

  with jax.enable_x64():
    grads = jax.grad(loss)(jax.tree.map(jnp.asarray, params))

  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  z1 = x @ params['W1'] + params['b1']
  a1 = sigmoid(z1)
  y_pred = sigmoid(a1 @ params['W2'] + params['b2'])
  dz2 = y_pred - y
  dz1 = dz2 @ params['W2'].T * a1 * (1 - a1)  # sigma'(z1) = a1 (1 - a1)
  expected = {'W2': a1.T @ dz2, 'b2': dz2.sum(0), 'W1': x.T @ dz1, 'b1': dz1.sum(0)}
  for name, value in expected.items():
    np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
