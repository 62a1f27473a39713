"""The README's compose-it-yourself block runs exactly as written (on mock MNIST)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'


def _compose_block() -> str:
  section = README.read_text().split('## Compose it yourself', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_compose_block_runs_verbatim(tmp_path, monkeypatch, capsys, mock_tfds):
  monkeypatch.chdir(tmp_path)
  code = _compose_block()
  assert len(code.splitlines()) <= 40
  namespace = {}
  with mock_tfds(num_examples=300):
    exec(compile(code, str(README), 'exec'), namespace)  # noqa: S102 - the README itself.
  assert int(namespace['state'].step) == 200
  assert [r['step'] for r in namespace['history'].eval] == [100, 200]
  assert 'weighted avg' in capsys.readouterr().out
  assert (tmp_path / 'training_curves.png').stat().st_size > 0


def _sharding_block() -> str:
  section = README.read_text().split('In your own code the pieces are:', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def test_readme_sharding_pieces_run_as_written_and_match_one_device():
  """The README's make_mesh / create_sharded_state / jit_train_step / shard_batch lines, on 8
  devices (data 2 x fsdp 4), give the same step as the plain step on one device."""
  import jax
  import numpy as np
  import optax

  import jaxmodels as jm
  model = jm.linen_model(jm.models.MLP(hidden=(64,), num_classes=10))
  tx = optax.adam(1e-2)
  images = np.random.default_rng(0).random((16, 8, 8, 1), np.float32)
  local_batch = {'inputs': images, 'labels': np.arange(16) % 10}
  namespace = {'init_fn': lambda rng: jm.create_train_state(model, tx, rng, images[:1]),
               'rng': jax.random.PRNGKey(0), 'local_batch': local_batch,
               'train_step': jm.make_train_step(model.apply, jm.classification_loss(), tx)}
  exec(compile(_sharding_block(), str(README), 'exec'), namespace)  # noqa: S102
  state, metrics = namespace['state'], namespace['metrics']
  kernel = state.params['Dense_0']['kernel']
  assert len(kernel.sharding.device_set) == 8 and 'fsdp' in kernel.sharding.spec  # Split 4 ways.

  one = jm.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1])
  one, one_metrics = jax.jit(namespace['train_step'])(one, local_batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(state.params), jax.device_get(one.params))
  np.testing.assert_allclose(float(metrics['loss'].total), float(one_metrics['loss'].total),
                             rtol=1e-5)
