"""Gradient accumulation equals one big batch; bf16 compute trains like f32;
rematerialisation changes memory, not numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.models import ConvNet, SmallCNN, ThreeConvCNN


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
          'labels': rng.integers(0, 10, n).astype(np.int32),
          'mask': (rng.random(n) > 0.2).astype(np.float32)}


@pytest.mark.parametrize('micro_batches', [2, 4])
def test_accumulating_k_micro_batches_equals_one_step_on_k_times_b(micro_batches):
  batch = _batch()
  model = jm.linen_model(ThreeConvCNN(widths=(8, 16), dense=32))
  tx = optax.sgd(0.1, momentum=0.9)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'][:1])
  make = lambda k: jax.jit(jm.make_train_step(model.apply, jm.classification_loss(), tx,
                                              jm.classification_metrics(10), micro_batches=k))
  whole, accumulated = state, state
  for _ in range(3):
    whole, whole_metrics = make(1)(whole, batch)
    accumulated, acc_metrics = make(micro_batches)(accumulated, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               whole.params, accumulated.params)
  for key in ('loss', 'accuracy', 'grad_norm'):
    assert jm.summarize(acc_metrics)[key] == pytest.approx(jm.summarize(whole_metrics)[key], rel=1e-5)


def test_micro_batches_must_divide_the_batch():
  model = jm.linen_model(SmallCNN())
  tx = optax.sgd(0.1)
  batch = _batch(n=10)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), batch['inputs'][:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx, micro_batches=4)
  with pytest.raises(ValueError, match='does not split into 4 micro-batches'):
    step(state, batch)


def _fit_on_digits(dtype):
  data = jm.load_dataset('digits')  # Real, learnable and bundled: scikit-learn's 8x8 digits.
  model = jm.linen_model(SmallCNN(dtype=dtype))
  tx = jm.make_optimizer('adam', 3e-3)
  inputs = (data.train_images / 255.0).astype(np.float32)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), inputs[:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx, jm.classification_metrics(10))
  state, history = jm.fit(state, step, (inputs, data.train_labels), batch_size=32, num_steps=96,
                          log_every_steps=8, progress=False, steps_per_dispatch=8)
  return model, state, inputs, np.array([r['loss'] for r in history.train])


def test_bf16_compute_trains_into_the_f32_loss_band_with_f32_params():
  _, f32_state, _, f32 = _fit_on_digits(jnp.float32)
  model, bf16_state, inputs, bf16 = _fit_on_digits(jnp.bfloat16)
  # The policy: parameters and optimiser state stay float32, the convolutions run in bf16.
  assert {x.dtype for x in jax.tree.leaves((bf16_state.params, bf16_state.opt_state))
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, inputs[:2], train=False))(
      bf16_state.params))
  assert 'conv_general_dilated' in jaxpr and 'bf16[2,6,6,32]' in jaxpr
  # Both learn the digits, at the same pace.
  assert f32[-1] < 0.2 * f32[0] and bf16[-1] < 0.2 * bf16[0]
  np.testing.assert_allclose(bf16, f32, rtol=0.15, atol=0.02)


def test_remat_gives_the_same_gradients():
  batch = _batch()
  grads = []
  for remat in (False, True):
    model = jm.linen_model(ConvNet(widths=(4, 8), remat=remat))
    state = jm.create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), batch['inputs'][:1])
    loss = lambda p, model=model, state=state: jm.softmax_cross_entropy(model.apply(
        {'params': p, **state.model_state}, batch['inputs'], train=True,
        rngs={'dropout': jax.random.PRNGKey(1)})[0], batch['labels']).mean()
    grads.append(jax.jit(jax.grad(loss))(state.params))
    # The recomputation shows up as a remat (jax.checkpoint) primitive in the gradient.
    assert ('remat' in str(jax.make_jaxpr(jax.grad(loss))(state.params))) == remat
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


def test_slice_sizes_split_big_batches_of_models_without_batch_statistics():
  from jaxmodels.train.step import micro_batch_count
  slices = (128, 64)
  assert micro_batch_count(512, slices, {}) == 4   # Slices of 128.
  assert micro_batch_count(192, slices, {}) == 3   # Of 64.
  assert micro_batch_count(512, slices, {'batch_stats': {'mean': np.zeros(3)}}) == 1
  assert micro_batch_count(128, slices, {}) == 1
  assert micro_batch_count(200, slices, {}) == 1   # Uneven.
  assert micro_batch_count(512, (), {}) == 1       # The default: the batch stays whole.


def test_the_cpu_path_gives_slices_on_one_cpu_device_only(monkeypatch):
  from jaxmodels.train import cpu_path
  model = jm.linen_model(SmallCNN())
  step = jm.make_train_step(model.apply, jm.classification_loss(), optax.sgd(0.1))
  assert step.slice_sizes == () and not step.unroll  # make_train_step alone: plain defaults.
  assert cpu_path.tuned(step).slice_sizes == ()  # 8 devices here.
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  assert cpu_path.tuned(step).slice_sizes == (128, 64)
  per_device = jm.make_train_step(model.apply, jm.classification_loss(), optax.sgd(0.1),
                                  axis_name='data')
  assert cpu_path.tuned(per_device).slice_sizes == ()


def test_micro_batches_run_in_turn_so_their_temporaries_do_not_add_up():
  """Unrolled (as on CPU), the slices are one program; each slice's activations must be gone
  before the next starts, or slicing a batch saves no memory (and no cache)."""
  model = jm.linen_model(SmallCNN())
  tx = optax.adam(1e-3)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))

  def temporaries(batch_size, micro_batches):
    step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                              micro_batches=micro_batches, unroll=True)
    batch = {'inputs': jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.float32),
             'labels': jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    compiled = jax.jit(step).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  two, eight = temporaries(64, 2), temporaries(256, 8)  # Slices of 32 either way.
  assert eight < 1.25 * two, (two, eight)  # Side by side, 8 slices would need about 4x.


def test_inputs_made_to_wait_for_gradients_keep_their_values_and_dtypes():
  from jaxmodels.train.step import _after
  grads = {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}
  batch = {'inputs': {'tokens': jnp.arange(6, dtype=jnp.int32), 'pixels': -jnp.ones(4)},
           'labels': jnp.arange(2)}
  out = jax.jit(_after)(grads, batch)
  for key, value in batch['inputs'].items():
    assert out['inputs'][key].dtype == value.dtype
    np.testing.assert_array_equal(out['inputs'][key], value)
  assert out['labels'] is batch['labels'] or np.array_equal(out['labels'], batch['labels'])
