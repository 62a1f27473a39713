"""The CPU fast path keeps the numerics of the straightforward formulations."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.models import SmallCNN, ThreeConvCNN, cnn
from jaxmodels.models.fast_path import rewrite_for_cpu
from jaxmodels.models.layers import attention, dense_product, max_pool


def flax_max_pool(x, window):
  return nn.max_pool(x, (window, window), strides=(window, window))


@pytest.mark.parametrize('shape,window', [((2, 8, 8, 3), 2), ((3, 7, 9, 4), 2), ((2, 12, 10, 5), 3)])
def test_max_pool_and_its_gradient_equal_flax_max_pool_ties_included(shape, window):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x = x.at[0, 0, 0].set(x[0, 1, 1]).at[1, 2, 2].set(x[1, 3, 3])  # Ties inside a window.
  x = x.at[1, :window, :window].set(0.0)                          # ReLU-style zeros.
  np.testing.assert_array_equal(max_pool(x, window), flax_max_pool(x, window))
  cotangent = jax.random.normal(jax.random.PRNGKey(1), flax_max_pool(x, window).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x, window) * cotangent))(x)
  np.testing.assert_array_equal(grad(max_pool), grad(flax_max_pool))


class StraightforwardSmallCNN(nn.Module):
  """SmallCNN as written in the Flax docs: conv -> ReLU -> nn.max_pool -> dense."""

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.relu(nn.Conv(32, (3, 3), padding='VALID', name='Conv_0')(x))
    x = flax_max_pool(x, 2).reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, name='Dense_0')(x))
    return nn.Dense(10, name='Dense_1')(x)


def _loss_and_grads(module, variables, images, labels):
  model = jm.linen_model(module)

  def objective(params):
    logits, _ = model.apply({**variables, 'params': params}, images, train=True)
    return jnp.mean(jm.classification_loss()(logits, {'labels': labels}))
  return jax.jit(jax.value_and_grad(objective))(variables['params'])


def test_small_cnn_equals_the_straightforward_formulation():
  """Pool-before-ReLU and the custom pooling gradient: same loss and gradients."""
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  variables = jm.linen_model(SmallCNN()).init(jax.random.PRNGKey(1), images)
  fast = _loss_and_grads(SmallCNN(), variables, images, labels)
  reference = _loss_and_grads(StraightforwardSmallCNN(), variables, images, labels)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_three_conv_cnn_gradients_equal_those_with_flax_max_pool(monkeypatch):
  """With batch-norm, and ReLU zeros (exact ties in a window)."""
  module = ThreeConvCNN(widths=(8, 16, 16), dense=16, batch_norm=True)
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  variables = jm.linen_model(module).init(jax.random.PRNGKey(1), images)
  fast = _loss_and_grads(module, variables, images, labels)
  monkeypatch.setattr(cnn, 'max_pool', flax_max_pool)
  reference = _loss_and_grads(module, variables, images, labels)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_steps_per_dispatch_scan_equals_one_step_per_call():
  """fit's k-steps-per-dispatch program (lax.scan) trains as k separate calls do (XLA may
  fuse across the unrolled steps, so to float rounding rather than to the bit)."""
  rng = np.random.default_rng(0)
  images = rng.random((64, 28, 28, 1), np.float32)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  model = jm.linen_model(SmallCNN())
  tx = optax.adam(1e-3)
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx, jm.classification_metrics(10))
  results = []
  for spd in (1, 4):
    state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1])
    state, history = jm.fit(state, step, (images, labels), batch_size=16, num_steps=8,
                            steps_per_dispatch=spd, log_every_steps=8, progress=False)
    results.append((state.params, history.train[-1]['loss']))
  for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)


CACHE_CHILD = '''
import sys, jax, jax.numpy as jnp
import jaxmodels as jm
print(jm.enable_compilation_cache(sys.argv[1]))
print(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.arange(3.0)).sum())
'''


def test_compilation_cache_writes_programs_to_its_directory(tmp_path):
  out = subprocess.run([sys.executable, '-c', CACHE_CHILD, str(tmp_path / 'cache')],
                       capture_output=True, text=True, check=True)
  assert out.stdout.split('\n')[0] == str(tmp_path / 'cache')
  assert any((tmp_path / 'cache').iterdir()), 'no compiled program was cached'
  assert jm.enable_compilation_cache('off') is None


class UsersCNN(nn.Module):
  """A model as a user writes it, with Flax's own nn.max_pool: batch-norm, dropout, an
  overlapping pool (3x3, stride 2: left alone) and a pool inside a jitted helper."""

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jax.jit(lambda y: nn.max_pool(y, (2, 2), strides=(2, 2)))(nn.relu(nn.Conv(8, (3, 3))(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


def test_the_tuned_step_rewrites_a_users_nn_max_pool_and_first_conv_with_the_same_numbers():
  """cpu_path.tuned swaps nn.max_pool's select-and-scatter gradient for layers.max_pool's
  and the one-channel conv for layers.conv_few_inputs; make_train_step alone does not. One
  step (values, gradients, batch statistics, metrics) equals the untuned step, to rounding
  (the conv sums in another order). SGD keeps the update linear in the gradient: Adam would
  blow the rounding noise of Conv_0's bias gradient (zero in exact arithmetic, batch-norm
  follows) up to +-lr."""
  from jaxmodels.train import cpu_path
  rng = np.random.default_rng(0)
  batch = {'inputs': np.maximum(rng.normal(size=(16, 12, 12, 1)), 0).astype(np.float32),
           'labels': rng.integers(0, 10, 16).astype(np.int32)}  # ReLU-style zeros: ties.
  model = jm.linen_model(UsersCNN())
  tx = optax.sgd(0.1)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'][:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                            jm.classification_metrics(10))
  fast, reference = jax.jit(cpu_path.tuned(step)), jax.jit(step)
  count = lambda step, op: step.lower(state, batch).as_text().count(op)
  assert count(reference, 'select_and_scatter') == 3
  assert count(fast, 'select_and_scatter') == 1  # The overlapping pool keeps its one.
  # Conv_0 (1 input channel) forward and kernel gradient are gone; Conv_1 (8) keeps 3.
  assert count(reference, 'stablehlo.convolution') == 5
  assert count(fast, 'stablehlo.convolution') == 3
  (new_fast, m_fast), (new_ref, m_ref) = fast(state, batch), reference(state, batch)
  for a, b in zip(jax.tree.leaves((new_fast, m_fast)), jax.tree.leaves((new_ref, m_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  moved = lambda new: new.params['Conv_0']['kernel'] - state.params['Conv_0']['kernel']
  np.testing.assert_allclose(moved(new_fast), moved(new_ref), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('shape,kernel_shape,padding', [
    ((3, 28, 28, 1), (3, 3, 1, 32), 'VALID'),
    ((2, 9, 11, 3), (3, 3, 3, 5), 'SAME'),
    ((2, 8, 8, 2), (2, 4, 2, 3), ((1, 0), (2, 1))),
])
def test_conv_few_inputs_equals_lax_conv_in_value_and_gradients(shape, kernel_shape, padding):
  """The rewritten convolution against lax.conv_general_dilated: outputs, kernel and input
  gradients, under an arbitrary cotangent; and the rewrite does replace it."""
  from jaxmodels.models.fast_path import rewrite_for_cpu
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  fast = rewrite_for_cpu(conv)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), conv(x, kernel).shape)
  grads = lambda fn: jax.grad(lambda x, k: jnp.sum(fn(x, k) * cotangent), argnums=(0, 1))(
      x, kernel)
  np.testing.assert_allclose(fast(x, kernel), conv(x, kernel), rtol=1e-5, atol=1e-5)
  for a, b in zip(grads(fast), grads(conv)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  ops = lambda fn: [e.primitive.name for e in jax.make_jaxpr(fn)(x, kernel).jaxpr.eqns]
  assert 'conv_general_dilated' in ops(conv) and 'conv_general_dilated' not in ops(fast)


def test_the_rewrite_leaves_wide_strided_and_low_precision_convolutions_alone():
  from jaxmodels.models.fast_path import rewrite_for_cpu
  x = jnp.ones((2, 8, 8, 4))
  cases = [(x, jnp.ones((3, 3, 4, 2)), (1, 1)),                       # 36 products > 27
           (x[..., :1], jnp.ones((3, 3, 1, 2)), (2, 2)),              # strided
           (x[..., :1].astype(jnp.bfloat16), jnp.ones((3, 3, 1, 2), jnp.bfloat16), (1, 1))]
  for inputs, kernel, strides in cases:
    conv = lambda x, k, s=strides: jax.lax.conv_general_dilated(
        x, k, s, 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    jaxpr = jax.make_jaxpr(rewrite_for_cpu(conv))(inputs, kernel).jaxpr
    assert [e.primitive.name for e in jaxpr.eqns] == ['conv_general_dilated']


def test_the_rewrite_moves_a_relu_after_the_pool_with_equal_gradients():
  """relu -> nn.max_pool becomes max_pool -> relu (a quarter of the values), values and
  gradients equal, windows of exact zeros and negative ties included; a ReLU whose result
  is also used elsewhere still gives the same numbers."""
  from jaxmodels.models.fast_path import rewrite_for_cpu
  rng = np.random.default_rng(0)
  x = (np.maximum(rng.normal(size=(2, 6, 6, 3)), 0) - 0.3).astype(np.float32)
  x[0] = 0.0
  x[1, :2] = -1.0

  def pooled_only(x):
    return (nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2)) ** 2).sum()

  def pooled_and_reused(x):
    y = nn.relu(x)
    return (nn.max_pool(y, (2, 2), strides=(2, 2)) ** 2).sum() + (y * x).sum()

  for fn in (pooled_only, pooled_and_reused):
    fast = rewrite_for_cpu(fn)
    np.testing.assert_allclose(fast(x), fn(x), rtol=1e-6)
    np.testing.assert_array_equal(jax.grad(fast)(x), jax.grad(fn)(x))
  relu_shapes = [eqn.outvars[0].aval.shape for eqn in jax.make_jaxpr(
    rewrite_for_cpu(pooled_only))(x).jaxpr.eqns if eqn.primitive.name == 'custom_jvp_call']
  assert relu_shapes == [(2, 3, 3, 3)]


@pytest.mark.parametrize('recomputes_exactly', [True, False], ids=['cpu', 'other'])
@pytest.mark.parametrize('shape,kernel_shape,window,with_bias', [
    ((3, 28, 28, 1), (3, 3, 1, 8), 2, True),
    ((2, 13, 11, 3), (3, 3, 3, 5), 2, True),   # Odd sizes: the last row and column are dropped.
    ((2, 12, 12, 2), (2, 2, 2, 4), 3, False),
])
def test_conv_pool_equals_conv_bias_and_flax_max_pool_in_value_and_gradients(
    shape, kernel_shape, window, with_bias, recomputes_exactly):
  """layers.conv_pool against lax.conv_general_dilated + bias + nn.max_pool: outputs and the
  input, kernel and bias gradients under an arbitrary cotangent. Zero image regions make
  windows of equal values (ties), whose gradient goes to the first, as select-and-scatter
  gives it. 'cpu': the backward takes the forward pass's maximum, as the CPU path asks;
  'other': the default, taking the maximum again."""
  from jaxmodels.models.layers import conv_pool
  x = jax.random.normal(jax.random.PRNGKey(0), shape).at[0, :6, :6].set(0.0)
  kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
  bias = jax.random.normal(jax.random.PRNGKey(2), kernel_shape[-1:])

  def reference(x, kernel, bias):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return flax_max_pool(y + bias if with_bias else y, window)

  fast = lambda x, kernel, bias: conv_pool(x, kernel, bias if with_bias else None, window,
                                           recomputes_exactly=recomputes_exactly)
  cotangent = jax.random.normal(jax.random.PRNGKey(3), reference(x, kernel, bias).shape)
  grads = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2))(
      x, kernel, bias)
  np.testing.assert_allclose(fast(x, kernel, bias), reference(x, kernel, bias), rtol=1e-5,
                             atol=1e-5)
  for a, b in zip(grads(fast), grads(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert not with_bias or np.abs(grads(fast)[2]).min() > 0


class ConvReusedCNN(nn.Module):
  """A first conv whose output also feeds a second branch: it must not be fused."""

  @nn.compact
  def __call__(self, x, *, train=False):
    y = nn.Conv(4, (3, 3), padding='VALID')(x)
    pooled = nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2)).reshape((x.shape[0], -1))
    return nn.Dense(10)(pooled) + y.mean((1, 2)).sum(-1, keepdims=True)


@pytest.mark.parametrize('module', [SmallCNN(), StraightforwardSmallCNN(), ConvReusedCNN()],
                         ids=['SmallCNN', 'relu-then-nn.max_pool', 'conv-output-reused'])
def test_the_rewrite_fuses_a_first_conv_its_bias_and_the_pool_with_equal_gradients(module):
  """conv -> bias -> (ReLU ->) pool, as nn.Conv and nn.max_pool or layers.max_pool write it,
  becomes one layers.conv_pool; the loss and every gradient equal the unrewritten model's.
  A conv whose output is used elsewhere too keeps its own pool."""
  from jaxmodels.models.fast_path import rewrite_for_cpu
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  images = images.at[:2, :10].set(0.0)  # Windows of equal values: ties.
  labels = jnp.arange(8) % 10
  model = jm.linen_model(module)
  variables = model.init(jax.random.PRNGKey(1), images)

  def loss(apply):
    def objective(params):
      logits, _ = apply({**variables, 'params': params}, images, train=True)
      return jnp.mean(jm.classification_loss()(logits, {'labels': labels}))
    return objective

  fast, reference = loss(rewrite_for_cpu(model.apply)), loss(model.apply)
  for a, b in zip(jax.tree.leaves(jax.value_and_grad(fast)(variables['params'])),
                  jax.tree.leaves(jax.value_and_grad(reference)(variables['params']))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  sources = [str(e.params['call_jaxpr'].jaxpr.debug_info.func_src_info) for e in
             jax.make_jaxpr(fast)(variables['params']).jaxpr.eqns
             if e.primitive.name == 'custom_vjp_call']
  fused = [s for s in sources if s.startswith('_conv_pool ')]
  assert len(fused) == (0 if isinstance(module, ConvReusedCNN) else 1), sources


def test_fit_tunes_a_plain_step_for_the_cpu_as_an_explicitly_tuned_step_trains():
  """The CPU path is a wrapper: the untuned step differentiates nn.max_pool with
  select-and-scatter, the tuned one does not; fit applies the wrapper to a plain step, also
  inside with_preprocess and skip_nonfinite, so both train to the same bits; tuning twice
  is tuning once."""
  from jaxmodels.train import cpu_path
  rng = np.random.default_rng(0)
  images = rng.random((64, 12, 12, 1), np.float32)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  model = jm.linen_model(StraightforwardSmallCNN())
  tx = optax.adam(1e-3)
  plain = jm.with_preprocess(jm.train.skip_nonfinite(jm.make_train_step(
      model.apply, jm.classification_loss(), tx)), lambda rng, batch: batch)
  tuned = cpu_path.tuned(plain)
  assert cpu_path.tuned(tuned) is tuned and tuned.train_step.train_step.unroll
  state = lambda: jm.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1])
  batch = {'inputs': images[:16], 'labels': labels[:16]}
  count = lambda step: jax.jit(step).lower(state(), batch).as_text().count('select_and_scatter')
  assert count(plain) == 1 and count(tuned) == 0
  results = [jm.fit(state(), step, (images, labels), batch_size=16, num_steps=6,
                    progress=False)[0] for step in (plain, tuned)]
  for a, b in zip(*map(jax.tree.leaves, results)):
    np.testing.assert_array_equal(a, b)


def test_dropout_keeps_at_its_rate_scales_and_differentiates_as_flax_dropout():
  """layers.Dropout: kept entries are x / keep_prob, dropped ones 0, at the keep rate (to
  1/65536); the gradient is the mask over keep_prob, as nn.Dropout's; off when
  deterministic or at rate 0; the same key gives the same mask, another key another."""
  from jaxmodels.models.layers import Dropout, keep_mask
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 128, 256)) + 3.0  # No zero inputs.
  rng = {'dropout': jax.random.PRNGKey(1)}
  layer = Dropout(0.1)
  y = layer.apply({}, x, deterministic=False, rngs=rng)
  kept = np.asarray(y != 0)
  assert abs(kept.mean() - 0.9) < 3 * np.sqrt(0.09 / kept.size)
  np.testing.assert_array_equal(np.asarray(y)[kept], np.asarray(x / 0.9)[kept])
  grad = jax.grad(lambda x: jnp.sum(layer.apply({}, x, deterministic=False, rngs=rng)))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.where(kept, np.float32(1 / 0.9), 0))
  flax_grad = jax.grad(lambda x: jnp.sum(nn.Dropout(0.1).apply(
      {}, x, deterministic=False, rngs=rng)))(x)
  assert set(np.unique(np.asarray(flax_grad))) == set(np.unique(np.asarray(grad)))
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False, rngs=rng), x)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=False, rngs=rng), y)
  other = keep_mask(jax.random.PRNGKey(2), 0.9, x.shape)
  assert 0.1 < np.mean(np.asarray(other) != kept) < 0.25  # Independent masks: 2 * 0.9 * 0.1.
  typed = keep_mask(jax.random.wrap_key_data(jax.random.PRNGKey(1)), 0.9, (7, 3))
  np.testing.assert_array_equal(typed, keep_mask(jax.random.PRNGKey(1), 0.9, (7, 3)))
  # Neighbouring entries are independent (16-bit halves of one hash): pairs as often kept
  # together as p^2 predicts.
  flat = kept.reshape(-1, 2)
  assert abs(np.mean(flat[:, 0] & flat[:, 1]) - 0.81) < 0.005


@pytest.mark.parametrize('shape', [(32, 128, 256), (7, 3), (5,), (1,)])
def test_keep_mask_draws_the_bits_of_jax_threefry(shape):
  """layers.threefry_2x32 (unrolled in lax ops) gives jax's own threefry bits, so the mask
  is `jax.extend.random.threefry_2x32(key, iota)` in 16-bit halves below the threshold, for
  sizes that are and are not a multiple of the four draws one hash gives."""
  from jax.extend import random as jax_random

  from jaxmodels.models.layers import keep_mask, threefry_2x32
  key = jax.random.PRNGKey(7)
  counts = jax.random.bits(jax.random.PRNGKey(8), (2, 1000), jnp.uint32)
  ours = jax.jit(threefry_2x32)(key, counts[0], counts[1])
  np.testing.assert_array_equal(np.concatenate(ours),
                                jax_random.threefry_2x32(key, counts.reshape(-1)))
  size = int(np.prod(shape))
  words = np.asarray(jax_random.threefry_2x32(key, jnp.arange(2 * -(-size // 4),
                                                              dtype=jnp.uint32)))
  expected = (words.view(np.uint16)[:size] < round(0.9 * 65536)).reshape(shape)
  np.testing.assert_array_equal(jax.jit(keep_mask, static_argnums=(1, 2))(key, 0.9, shape),
                                expected)


@pytest.mark.parametrize('x_shape,kernel_shape,num_in', [
    ((64, 16), (16, 48), 1),         # widening
    ((3, 20, 24), (24, 96), 1),
    ((3, 20, 96), (96, 24), 1),      # narrowing, few rows: XLA's own kernel gradient
    ((128, 48), (48, 16), 1),        # narrowing, tall
    ((40, 32), (32, 32), 1),         # square
    ((2, 10, 16), (16, 2, 8), 1),    # a query projection: (B, T, E) x (E, H, D)
    ((2, 10, 2, 8), (2, 8, 16), 2),  # an output projection: (B, T, H, D) x (H, D, E)
])
def test_dense_product_equals_the_plain_product_in_value_and_gradients(x_shape, kernel_shape,
                                                                        num_in):
  """Values bit for bit; both gradients against float64 numpy and jax's own."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
  out_shape = x_shape[:len(x_shape) - num_in] + kernel_shape[num_in:]
  cotangent = jax.random.normal(jax.random.PRNGKey(2), out_shape)
  plain = lambda x, k: jnp.tensordot(x, k, num_in)
  ours = lambda x, k: dense_product(x, k, num_in=num_in)
  np.testing.assert_array_equal(ours(x, kernel), plain(x, kernel))
  grads = lambda f: jax.grad(lambda x, k: jnp.sum(f(x, k) * cotangent), argnums=(0, 1))(x, kernel)
  fan_in = int(np.prod(kernel_shape[:num_in]))
  x64 = np.asarray(x, np.float64).reshape(-1, fan_in)
  k64 = np.asarray(kernel, np.float64).reshape(fan_in, -1)
  g64 = np.asarray(cotangent, np.float64).reshape(x64.shape[0], -1)
  x_grad, kernel_grad = grads(ours)
  np.testing.assert_allclose(x_grad, (g64 @ k64.T).reshape(x_shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(kernel_grad, (x64.T @ g64).reshape(kernel_shape), rtol=1e-5,
                             atol=1e-4)
  for a, b in zip((x_grad, kernel_grad), grads(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _gpt_and_its_rewrite(mlp_dim: int, length: int, batch: int):
  """(params, apply, rewritten): a small GPT's logits as a function of its params, plain
  and through `rewrite_for_cpu`."""
  model = jm.models.GPT(vocab_size=16, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=mlp_dim,
                        max_length=length, dropout=0.0)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, length), 0, 16)
  params = model.init(jax.random.PRNGKey(1), tokens)['params']
  apply = lambda params: model.apply({'params': params}, tokens)
  return params, apply, rewrite_for_cpu(apply)


def _assert_equal_gradients(rewritten, apply, params, rtol: float):
  loss = lambda f: lambda p: jnp.mean(jax.nn.log_softmax(f(p))[..., 0])
  ours, plain = jax.grad(loss(rewritten))(params), jax.grad(loss(apply))(params)
  plain = dict(jax.tree_util.tree_leaves_with_path(plain))
  for path, a in jax.tree_util.tree_leaves_with_path(ours):
    np.testing.assert_allclose(a, plain[path], rtol=rtol, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_the_rewrite_computes_every_dense_layer_with_dense_product_and_equal_gradients():
  """A GPT's dense products go through dense_product: per block the query, key, value and
  output projections and the MLP's two layers, then the tied output layer; the logits and
  every gradient agree with the unrewritten model. With 64 rows (batch 8 x length 8) every
  product is tall (at least as many rows as the 64-wide MLP), so each is rewritten."""
  params, apply, rewritten = _gpt_and_its_rewrite(mlp_dim=64, length=8, batch=8)
  text = str(jax.make_jaxpr(rewritten)(params))
  assert text.count('fwd=_dense_product_fwd') == 2 * 6 + 1
  # (Attention is rewritten too: the logits agree to rounding.)
  np.testing.assert_allclose(rewritten(params), apply(params), rtol=1e-5, atol=1e-6)
  _assert_equal_gradients(rewritten, apply, params, rtol=1e-5)


def test_the_rewrite_leaves_a_classifier_head_with_few_rows_to_xla():
  """An MLP on 4 examples: the narrowing layers (64 -> 32 -> 10) have fewer rows than their
  kernels and keep XLA's product; a widening one (64 -> 128) is rewritten."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8))
  for hidden, rewritten_layers in (((32,), 0), ((128,), 1)):
    model = jm.models.MLP(hidden=hidden, num_classes=10)
    params = model.init(jax.random.PRNGKey(1), x)
    apply = lambda p, model=model: model.apply(p, x)
    text = str(jax.make_jaxpr(rewrite_for_cpu(apply))(params))
    assert text.count('fwd=_dense_product_fwd') == rewritten_layers
    np.testing.assert_allclose(rewrite_for_cpu(apply)(params), apply(params), rtol=1e-6)


@pytest.mark.parametrize('causal,length', [(True, 128), (True, 100), (False, 96)])
def test_cpu_attention_equals_jax_dot_product_attention_in_value_and_gradients(causal, length):
  """Blocks of 64 queries (the last one shorter at 100), and the non-causal form."""
  q, k, v, g = (jax.random.normal(key, (2, length, 3, 16))
                for key in jax.random.split(jax.random.PRNGKey(0), 4))
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)
  ours = lambda q, k, v: attention(q, k, v, causal)
  np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-5)
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(grads(ours), grads(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_rewrite_computes_a_gpts_attention_with_the_cpu_formulation():
  params, apply, rewritten = _gpt_and_its_rewrite(mlp_dim=32, length=80, batch=2)
  assert str(jax.make_jaxpr(apply)(params)).count('name=causal_dot_product_attention') == 2
  assert 'causal_dot_product_attention' not in str(jax.make_jaxpr(rewritten)(params))
  np.testing.assert_allclose(rewritten(params), apply(params), rtol=1e-5, atol=1e-5)
  _assert_equal_gradients(rewritten, apply, params, rtol=1e-4)
