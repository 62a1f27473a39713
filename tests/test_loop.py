"""fit: epochs or steps, dispatches of several steps, the Evaluate / EarlyStopping / LogWriter
callbacks, history, whole-split evaluation."""
import jax
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.models import MLP

NUM_CLASSES = 3


def _data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  centers = rng.normal(size=(NUM_CLASSES, 6)) * 3
  inputs = (centers[labels] + rng.normal(size=(n, 6))).astype(np.float32)
  return inputs, labels


def _setup(lr=0.05):
  model = jm.linen_model(MLP(hidden=(16,), num_classes=NUM_CLASSES))
  tx = optax.sgd(lr, momentum=0.9)
  inputs, _ = _data()
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), inputs[:1])
  metrics_fn = jm.classification_metrics(NUM_CLASSES)
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx, metrics_fn)
  eval_step = jm.make_eval_step(model.apply, jm.classification_loss(), metrics_fn)
  return model, state, step, eval_step


def _assert_same_bits(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_epochs_and_steps_agree_and_steps_per_dispatch_keeps_the_result():
  data = _data()  # 96 examples: 6 steps of 16 per epoch.
  _, state, step, _ = _setup()
  kw = dict(batch_size=16, progress=False, data_rng=jax.random.PRNGKey(1))
  by_epochs, h = jm.fit(state, step, data, num_epochs=4, log_every_steps=4, steps_per_dispatch=1,
                        **kw)
  _, state, step, _ = _setup()
  by_steps, h5 = jm.fit(state, step, data, num_steps=24, steps_per_dispatch=5,
                        log_every_steps=12, **kw)
  assert int(by_epochs.step) == int(by_steps.step) == 24
  assert h.dispatch_sizes == (1,) and h5.dispatch_sizes == (1, 5)  # 5 steps ran in one call.
  # The same steps on the same batches. Not always the same bits: XLA may contract a
  # multiply-add differently in a 5-step program (seen on an AVX-512 Xeon: 1 ulp).
  for x, y in zip(jax.tree.leaves(by_epochs.params), jax.tree.leaves(by_steps.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert [r['step'] for r in h.train] == [4, 8, 12, 16, 20, 24]
  assert h.train[-1]['loss'] < h.train[0]['loss']
  assert h.compile_seconds > 0 and h.examples_per_sec > 0


def test_resume_from_a_state_continues_the_same_data_order():
  data = _data()
  kw = dict(batch_size=16, progress=False, data_rng=jax.random.PRNGKey(1), log_every_steps=100)
  _, state, step, _ = _setup()
  straight, _ = jm.fit(state, step, data, num_steps=14, **kw)
  _, state, step, _ = _setup()
  half, _ = jm.fit(state, step, data, num_steps=9, **kw)  # Stops mid-epoch (6 steps/epoch).
  resumed, _ = jm.fit(half, step, data, num_steps=14, **kw)
  _assert_same_bits(straight, resumed)


def test_single_steps_on_one_cpu_take_host_batches_with_the_bits_of_the_gathered_ones(
    monkeypatch):
  """On one CPU device single steps read their batch from host rows (faster on XLA:CPU);
  the device-side gather of every other layout gives the same batches, so the same bits."""
  import dataclasses

  from jaxmodels.train import cpu_path, dispatch
  data = _data(90)  # Padding-free, but 90 // 16 = 5 steps leave 10 examples out each epoch.
  kw = dict(batch_size=16, num_steps=12, progress=False, data_rng=jax.random.PRNGKey(3),
            log_every_steps=4, steps_per_dispatch=1)
  host_batches = []
  original = dispatch.StepRunner._host_batch
  monkeypatch.setattr(dispatch.StepRunner, '_host_batch',
                      lambda self, *a: host_batches.append(a) or original(self, *a))
  _, state, step, _ = _setup()
  from_host, h_host = jm.fit(state, step, data, **kw)
  assert host_batches == [(e, p) for e in range(3) for p in range(5)][:12]
  execution = cpu_path.execution
  monkeypatch.setattr(cpu_path, 'execution', lambda mesh: dataclasses.replace(
      execution(mesh), host_fed_single_steps=False))
  _, state, step, _ = _setup()
  gathered, h_gathered = jm.fit(state, step, data, **kw)
  assert len(host_batches) == 12  # This run gathered its batches inside the program.
  _assert_same_bits(from_host, gathered)
  without_rate = lambda history: [{k: v for k, v in r.items() if k != 'examples_per_sec'}
                                  for r in history.train]
  assert without_rate(h_host) == without_rate(h_gathered)


def test_periodic_eval_and_callbacks():
  data = _data()
  _, state, step, eval_step = _setup()
  seen = []
  callback = jm.LambdaCallback(on_eval_end=lambda s, logs, st: seen.append((s, int(st.step))))
  evaluate = jm.Evaluate(eval_step, _data(40, seed=1), every_steps=8)
  _, history = jm.fit(state, step, data, batch_size=16, num_steps=20,
                      callbacks=[callback, evaluate], progress=False)
  assert [r['step'] for r in history.eval] == [8, 16, 20]
  assert seen == [(8, 8), (16, 16), (20, 20)]
  assert {'loss', 'accuracy'} <= set(history.eval[0])


def test_early_stopping_stops_and_restores_the_best_state():
  data = _data()
  _, state, step, eval_step = _setup()
  # Loss falls every eval, so in mode 'max' only the first eval is ever "best".
  stopper = jm.EarlyStopping(monitor='loss', mode='max', patience=2)
  final, history = jm.fit(state, step, data, batch_size=16, num_steps=60, progress=False,
                          callbacks=[stopper, jm.Evaluate(eval_step, data, every_steps=5)])
  assert [r['step'] for r in history.eval] == [5, 10, 15]
  assert stopper.best_step == 5 and int(final.step) == 5


def test_evaluate_counts_every_example_once():
  inputs, labels = _data(37)
  model, state, _, eval_step = _setup()
  metrics = jm.summarize(jm.make_evaluate_fn(eval_step, batch_size=8)(state, inputs, labels))
  logits, _ = model.apply({'params': state.params}, inputs, train=False)
  assert metrics['accuracy'] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))
  expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  assert metrics['loss'] == pytest.approx(float(expected_loss), rel=1e-5)


def test_fit_writes_tensorboard_and_jsonl(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  data = _data()
  _, state, step, eval_step = _setup()
  with jm.report.create_writer(str(tmp_path)) as writer:
    _, history = jm.fit(state, step, data, batch_size=16, num_steps=12, log_every_steps=6,
                        callbacks=[jm.LogWriter(writer), jm.Evaluate(eval_step, data)],
                        progress=False)
  events = EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  losses = [e.value for e in events.Scalars('train/loss')]
  assert [e.step for e in events.Scalars('train/loss')] == [6, 12]
  np.testing.assert_allclose(losses, [r['loss'] for r in history.train], rtol=1e-6)
  assert 'eval/accuracy' in events.Tags()['scalars']
  import json
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [6, 12]


def test_bad_fit_arguments():
  _, state, step, _ = _setup()
  with pytest.raises(jm.DataError, match='batch_size'):
    jm.fit(state, step, _data(), batch_size=0, num_steps=1, progress=False)
  with pytest.raises(jm.InputError, match='exactly one'):
    jm.fit(state, step, _data(), batch_size=8, progress=False)


def test_fit_compiles_through_the_public_parallel_api(monkeypatch):
  """One sharding path: fit's programs come from parallel.jit_train_step, as the README
  teaches for hand-written loops."""
  from jaxmodels import parallel
  calls = []
  original = parallel.jit_train_step
  monkeypatch.setattr(parallel, 'jit_train_step',
                      lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
  _, state, step, _ = _setup()
  jm.fit(state, step, _data(), batch_size=16, num_steps=4, steps_per_dispatch=2, progress=False)
  assert calls == [1]  # One program: 2 steps per dispatch.


def test_automatic_steps_per_dispatch():
  from jaxmodels import parallel
  one = parallel.single_device_mesh()
  eight = parallel.make_mesh({'data': 8})
  assert jm.train.auto_steps_per_dispatch(64, one) == 1  # CPU: a cheaper compile, same speed.
  assert jm.train.auto_steps_per_dispatch(512, eight) == 4
  assert jm.train.auto_steps_per_dispatch(2048, eight) == 1  # A long step, already unrolled.


def test_every_example_trains_whatever_the_device_count():
  """37 examples on 8 devices: the split is padded and masked, not cut, so an epoch of
  37 // 8 = 4 steps is the same on 1 and 8 devices, and the masked padding adds nothing."""
  from jaxmodels import parallel
  inputs, labels = _data(37)
  placed = jm.data.shard_examples(parallel.make_mesh({'data': 8}), ('data',),
                                  {'inputs': inputs, 'labels': labels})
  assert placed.num_examples == 37 and placed.arrays['valid'].shape == (40,)
  assert float(placed.arrays['valid'].sum()) == 37 and placed.steps_per_epoch(8) == 4
  _, state, step, _ = _setup()
  _, history = jm.fit(state, step, placed, batch_size=8, num_epochs=1, progress=False,
                      mesh=placed.mesh, log_every_steps=1)
  assert len(history.train) == 4
