"""Sharding on 8 simulated CPU devices: data-parallel, FSDP and the shard_map
(pmap-style) step all give the 1-device numbers; FSDP really splits params."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxmodels as jm
from jaxmodels import parallel
from jaxmodels.models import MLP, ThreeConvCNN

STEPS = 3


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8


@pytest.mark.parametrize('sizes, expected', [
    ({'data': -1}, (8, 1, 1)), ({'data': 2, 'fsdp': -1}, (2, 4, 1)),
    ({'fsdp': 8}, (1, 8, 1)), ({'data': -1, 'model': 2}, (4, 1, 2))])
def test_mesh_shape_fills_the_minus_one_axis(sizes, expected):
  assert parallel.make_mesh(sizes).devices.shape == expected


@pytest.mark.parametrize('sizes, message', [
    ({'data': 3}, 'needs 3 devices'), ({'data': -1, 'fsdp': 3}, 'must divide'),
    ({'data': -1, 'fsdp': -1}, 'at most one -1'), ({'batch': 2}, 'unknown mesh axes')])
def test_bad_mesh_sizes(sizes, message):
  with pytest.raises(jm.ConfigError, match=message):
    parallel.make_mesh(sizes)


def test_mesh_works_with_set_mesh():
  mesh = parallel.make_mesh({'data': 4, 'fsdp': 2})
  with jax.set_mesh(mesh):
    x = jax.jit(lambda x: jax.lax.with_sharding_constraint(x * 2, P(parallel.BATCH_AXES)))(
        jnp.arange(16.0).reshape(16, 1))
  assert x.sharding.spec == P(parallel.BATCH_AXES) and len(x.sharding.device_set) == 8
  np.testing.assert_array_equal(x[:, 0], np.arange(16.0) * 2)


def _problem(model, seed=0, n=32, shape=(8, 8, 1)):
  rng = np.random.default_rng(seed)
  batch = {'inputs': rng.normal(size=(n, *shape)).astype(np.float32),
           'labels': rng.integers(0, 10, n).astype(np.int32)}
  model = jm.linen_model(model)
  # Adam would hide a gradient scale error (it normalises); momentum SGD does not.
  tx = optax.sgd(0.05, momentum=0.9)
  init = lambda r: jm.create_train_state(model, tx, r, batch['inputs'][:1])
  return model, tx, init, batch


def _train(step, state, batch):
  for _ in range(STEPS):
    state, _ = step(state, batch)
  return jax.device_get(state)


def _single_device(model, tx, init, batch):
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx)
  return _train(jax.jit(step), jax.jit(init)(jax.random.PRNGKey(0)), batch)


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), a, b)


BN_CNN = ThreeConvCNN(widths=(8, 16), dense=32, batch_norm=True)


@pytest.mark.parametrize('sizes', [{'data': 8}, {'fsdp': 8}, {'data': 2, 'fsdp': 4}])
def test_jit_data_parallel_and_fsdp_match_one_device(sizes):
  model, tx, init, batch = _problem(BN_CNN)  # Batch-norm: global statistics under GSPMD.
  expected = _single_device(model, tx, init, batch)
  mesh = parallel.make_mesh(sizes)
  state, shardings = parallel.create_sharded_state(init, jax.random.PRNGKey(0), mesh,
                                                   fsdp_min_size=64)
  step = parallel.jit_train_step(
      jm.make_train_step(model.apply, jm.classification_loss(), tx), shardings, mesh)
  result = _train(step, state, parallel.shard_batch(batch, mesh))
  _assert_close(result.params, expected.params)
  _assert_close(result.model_state, expected.model_state)
  _assert_close(result.opt_state, expected.opt_state)


def test_shard_map_per_device_step_matches_one_device():
  model, tx, init, batch = _problem(ThreeConvCNN(widths=(8, 16), dense=32))
  batch['mask'] = (np.arange(32) % 5 != 0).astype(np.float32)  # Uneven per-device counts.
  expected = _single_device(model, tx, init, batch)
  mesh = parallel.make_mesh({'data': 8})
  state = jax.device_put(jax.jit(init)(jax.random.PRNGKey(0)), NamedSharding(mesh, P()))
  body = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                            jm.classification_metrics(10), axis_name=parallel.BATCH_AXES)
  step = jax.jit(parallel.per_device_step(body, mesh))
  result = _train(step, state, parallel.shard_batch(batch, mesh))
  _assert_close(result.params, expected.params)
  # Metrics are global: the same as the 1-device step's on the same batch.
  _, metrics = step(state, parallel.shard_batch(batch, mesh))
  _, reference = jax.jit(jm.make_train_step(model.apply, jm.classification_loss(), tx,
                                            jm.classification_metrics(10)))(
      jax.jit(init)(jax.random.PRNGKey(0)), batch)
  for key in ('loss', 'accuracy', 'grad_norm'):
    assert jm.summarize(metrics)[key] == pytest.approx(jm.summarize(reference)[key], rel=1e-5)


def test_fsdp_splits_each_large_parameter_eight_ways():
  model, tx, init, _ = _problem(MLP(hidden=(256, 128)), shape=(16, 16, 1))
  mesh = parallel.make_mesh({'fsdp': 8})
  state, _ = parallel.create_sharded_state(init, jax.random.PRNGKey(0), mesh, fsdp_min_size=1024)
  for name, full in (('Dense_0', (256, 256)), ('Dense_1', (256, 128))):
    kernel = state.params[name]['kernel']
    assert kernel.shape == full
    shards = {s.data.shape for s in kernel.addressable_shards}
    assert shards == {(full[0] // 8, full[1])} and len(kernel.addressable_shards) == 8
    trace = state.opt_state[0].trace[name]['kernel']  # Optimiser state follows its parameter.
    assert {s.data.shape for s in trace.addressable_shards} == shards
  # Small leaves (biases, the 10-way head bias) stay whole on every device.
  assert state.params['Dense_2']['bias'].sharding.spec == P()


def test_sharding_rules_are_data():
  model, tx, init, _ = _problem(MLP(hidden=(64,)), shape=(8, 8, 1))
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'model': 2})
  rules = [(r'params/Dense_0/kernel$', P(None, 'model')), (r'trace/Dense_0/kernel$', P('fsdp', None))]
  shardings = parallel.sharding_rules(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh, rules,
                                      fsdp_min_size=10**9)
  assert shardings.params['Dense_0']['kernel'].spec == P(None, 'model')
  assert shardings.opt_state[0].trace['Dense_0']['kernel'].spec == P('fsdp', None)
  assert shardings.params['Dense_1']['kernel'].spec == P()


def test_fit_on_a_mesh_same_numbers_for_jit_and_shard_map():
  rng = np.random.default_rng(0)
  data = (rng.normal(size=(256, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 256).astype(np.int32))
  model, tx, init, _ = _problem(ThreeConvCNN(widths=(8, 16), dense=32))
  mesh = parallel.make_mesh({'data': 8})
  kw = dict(batch_size=32, num_steps=10, progress=False, mesh=mesh, log_every_steps=5)
  metrics = jm.classification_metrics(10)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  a, history = jm.fit(state, jm.make_train_step(model.apply, jm.classification_loss(), tx, metrics),
                      data, **kw)
  body = jm.make_train_step(model.apply, jm.classification_loss(), tx, metrics,
                            axis_name=parallel.BATCH_AXES)
  b, _ = jm.fit(jax.jit(init)(jax.random.PRNGKey(0)), parallel.per_device_step(body, mesh), data, **kw)
  _assert_close(jax.device_get(a.params), jax.device_get(b.params))
  assert history.train[-1]['loss'] < history.train[0]['loss']


def test_global_batch_the_mesh_does_not_divide():
  model, tx, init, _ = _problem(MLP(hidden=(8,)))
  data = (np.zeros((64, 8, 8, 1), np.float32), np.zeros(64, np.int32))
  with pytest.raises(jm.DataError, match='not divisible by the 8 batch shards'):
    jm.fit(jax.jit(init)(jax.random.PRNGKey(0)),
           jm.make_train_step(model.apply, jm.classification_loss(), tx), data, batch_size=12,
           num_steps=1, mesh=parallel.make_mesh({'data': 8}), progress=False)
