"""Bad input across the library: each case raises its exception type with one line that
says what is wrong and what to do. A last test checks that bad input never touches a
good checkpoint."""
import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels import parallel
from jaxmodels.checkpoint import Checkpointer, restore_or_init
from jaxmodels.data import (ImageClassificationData, load_dataset, make_augment, read_idx,
                            write_idx)
from jaxmodels.models import MLP, SmallCNN
from jaxmodels.tasks import image_classification, runner
from jaxmodels.cli import default_extensions
from jaxmodels.tasks.init_from import InitFrom

EXTENSIONS = default_extensions()  # What the experiments apply.

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(**changes):
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _schema():
  return runner.schema_of(image_classification.TASK, EXTENSIONS)


def _validate(**changes):
  return lambda tmp: runner.validate(image_classification.TASK, _config(**changes), EXTENSIONS)


def _mlp_fit(**kwargs):
  def run(tmp):
    model = jm.linen_model(MLP(hidden=(8,)))
    tx = optax.sgd(0.1)
    state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), np.zeros((1, 4), np.float32))
    step = jm.make_train_step(model.apply, jm.classification_loss(), tx)
    data = kwargs.pop('data', (np.zeros((32, 4), np.float32), np.zeros(32, np.int32)))
    args = {'batch_size': 8, 'num_steps': 1, 'progress': False, **kwargs}
    jm.fit(state, step, data, **args)
  return run


def _cnn_batch(images, labels):
  def run(tmp):
    model = jm.linen_model(SmallCNN())
    tx = optax.sgd(0.1)
    state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1)))
    step = jm.make_train_step(model.apply, jm.classification_loss(), tx)
    jm.fit(state, step, (images, labels), batch_size=8, num_steps=1, progress=False)
  return run


def _dataset(**changes):
  def run(tmp):
    arrays = dict(train_images=np.zeros((8, 28, 28, 1), np.uint8),
                  train_labels=np.zeros(8, np.int32), test_images=np.zeros((4, 28, 28, 1), np.uint8),
                  test_labels=np.zeros(4, np.int32))
    arrays.update(changes)
    ImageClassificationData(**arrays, num_classes=10, class_names=tuple('0123456789'),
                            source='test')
  return run


def _offline_mnist(tmp):
  os.environ['JAXMODELS_OFFLINE'] = '1'
  os.environ['JAXMODELS_DATA_DIR'] = str(tmp)
  try:
    load_dataset('mnist', data_dir=str(tmp))
  finally:
    del os.environ['JAXMODELS_OFFLINE'], os.environ['JAXMODELS_DATA_DIR']


def _wrong_type(tmp):
  """A config built from a plain dict, where ConfigDict's own type checks do not reach."""
  raw = _config().to_dict()
  raw['train']['batch_size'] = 'big'
  runner.validate(image_classification.TASK, ml_collections.ConfigDict(raw), EXTENSIONS)


def _binary_corpus(tmp):
  (tmp / 'weights.bin').write_bytes(np.random.default_rng(0).bytes(5000))
  jm.data.load_corpus(text_file=str(tmp / 'weights.bin'))


def _saved(tmp, hidden=(8,), config=None):
  model = jm.linen_model(MLP(hidden=hidden))
  init = lambda r: jm.create_train_state(model, optax.sgd(0.1), r, jnp.zeros((1, 4)))
  checkpointer = Checkpointer(str(tmp / 'ck'), config=config, save_every_steps=1)
  checkpointer.save(1, jax.jit(init)(jax.random.PRNGKey(0)), force=True)
  checkpointer.wait()
  return init


def _other_model_checkpoint(tmp):
  _saved(tmp, hidden=(8,))
  model = jm.linen_model(MLP(hidden=(9,)))
  init = lambda r: jm.create_train_state(model, optax.sgd(0.1), r, jnp.zeros((1, 4)))
  restore_or_init(Checkpointer(str(tmp / 'ck')), init, jax.random.PRNGKey(0))


def _other_config_checkpoint(tmp):
  init = _saved(tmp, config={'optimizer': {'name': 'sgd'}})
  restore_or_init(Checkpointer(str(tmp / 'ck'), config={'optimizer': {'name': 'adamw'}}), init,
                  jax.random.PRNGKey(0))


def _all_checkpoints_corrupt(tmp):
  init = _saved(tmp)
  for path in (tmp / 'ck' / '1').rglob('*'):
    if path.is_file():
      path.write_bytes(b'')
  restore_or_init(Checkpointer(str(tmp / 'ck')), init, jax.random.PRNGKey(0))


def _truncated_idx(tmp):
  write_idx(tmp / 'x.gz', np.zeros((4, 28, 28), np.uint8))
  data = (tmp / 'x.gz').read_bytes()
  import gzip
  raw = gzip.decompress(data)
  (tmp / 'x').write_bytes(raw[:-100])
  read_idx(tmp / 'x')


def _pickled_npz(tmp):
  (tmp / 'd').mkdir()
  for split in ('train', 'test'):
    np.savez(tmp / 'd' / f'{split}.npz', image=np.array([object()] * 2, dtype=object),
             label=np.zeros(2, np.int64))
  load_dataset('anything', source='local', local_dir=str(tmp / 'd'))


def _shard_map_with_fsdp(tmp):
  config = _config(**{'parallel.strategy': 'shard_map'})
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 4})
  model = jm.linen_model(MLP(hidden=(8,)))
  runner.make_train_step(model, jm.classification_loss(), optax.sgd(0.1), None, None, config, mesh)


def _unwritable_workdir(tmp):
  (tmp / 'a_file').write_text('x')
  jm.report.prepare_workdir(str(tmp / 'a_file' / 'run'))


def _init_from_missing(tmp):
  config = _config(init_from=str(tmp / 'nowhere'))
  module = MLP(hidden=(8,))
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  state, _ = runner.restore_or_create(module, jm.linen_model(module), optax.sgd(0.1), config,
                                      mesh, jnp.zeros((1, 4)), Checkpointer(str(tmp / 'ck')))
  InitFrom().initialize(config, module, state)  # The fresh state starts from init_from.


CASES = [
    # Batches and arrays.
    ('batch of the wrong shape', _cnn_batch(np.zeros((16, 32, 32, 3), np.float32),
                                            np.zeros(16, np.int32)),
     jm.InputError, 'train step rejects a batch of inputs (8, 32, 32, 3)'),
    ('labels of the wrong dtype', _cnn_batch(np.zeros((16, 28, 28, 1), np.float32),
                                             np.zeros(16, np.float32)),
     jm.InputError, 'labels (8,) float32'),
    ('labels out of range', _dataset(train_labels=np.array([0, 1, 2, 12, 0, 0, 0, 0], np.int32)),
     jm.DataError, '12'),
    ('test images of another shape', _dataset(test_images=np.zeros((4, 32, 32, 1), np.uint8)),
     jm.DataError, '(32, 32, 1)'),
    ('images that are not uint8', _dataset(train_images=np.zeros((8, 28, 28, 1), np.float32)),
     jm.DataError, 'expected uint8'),
    ('global batch the mesh does not divide', _mlp_fit(batch_size=12,
                                                       mesh=parallel.make_mesh({'data': 8})),
     jm.DataError, 'not divisible by the 8 batch shards'),
    ('batch larger than the data', _mlp_fit(batch_size=64), jm.DataError,
     'larger than the training set'),
    ('zero batch in fit', _mlp_fit(batch_size=0), jm.DataError, 'batch_size must be > 0'),
    ('both num_steps and num_epochs', _mlp_fit(num_epochs=1), jm.InputError, 'exactly one'),
    ('a hook LambdaCallback does not have', lambda tmp: jm.LambdaCallback(on_epoch=print),
     TypeError, "LambdaCallback has no hook 'on_epoch'"),
    # Config.
    ('unknown config key', lambda tmp: _schema().apply_overrides(
        _config(), [('train.batch_sise', '2')]),
     jm.ConfigError, "unknown config key 'train.batch_sise'; did you mean train.batch_size"),
    ('a value that does not parse', lambda tmp: _schema().apply_overrides(
        _config(), [('train.batch_size', 'abc')]),
     jm.ConfigError, "cannot read 'abc' as the int that train.batch_size takes"),
    ('a model the task cannot train', _validate(**{'model.name': 'gpt'}), jm.ConfigError,
     'model.name must be one of mlp, small_cnn'),
    ('an option of no model', lambda tmp: image_classification.TASK.model_arguments(
        _config(**{'model.widht': 3}), None), jm.ConfigError,
     'model.widht is an option of no model'),
    ('a config value of the wrong type', _wrong_type, jm.ConfigError,
     "train.batch_size must be an integer, got 'big'"),
    ('negative learning rate', _validate(**{'optimizer.learning_rate': -0.1}), jm.ConfigError,
     'optimizer.learning_rate must be > 0, got -0.1'),
    ('zero batch size', _validate(**{'train.batch_size': 0}), jm.ConfigError,
     'train.batch_size must be > 0'),
    ('label smoothing of 1.5', _validate(**{'train.label_smoothing': 1.5}), jm.ConfigError,
     'label_smoothing must be in [0, 1)'),
    ('unknown model', _validate(**{'model.name': 'resnet9000'}), jm.ConfigError,
     'model.name must be one of'),
    ('a corpus that is a directory', lambda tmp: jm.data.load_corpus(text_file=str(tmp)),
     jm.DataError, 'is a directory: pass a text file'),
    ('a binary corpus', _binary_corpus, jm.DataError, 'does not look like text (it has NUL bytes)'),
    ('unknown precision', _validate(**{'precision.compute_dtype': 'fp8'}), jm.ConfigError,
     'precision.compute_dtype must be one of float32, bfloat16'),
    ('unknown strategy', _validate(**{'parallel.strategy': 'pmap'}), jm.ConfigError,
     'parallel.strategy must be one of jit, shard_map'),
    ('micro-batches that do not divide the batch', _validate(**{'train.micro_batches': 3}),
     jm.ConfigError, 'must be a multiple of train.micro_batches=3'),
    ('unknown resume mode', _validate(resume='always'), jm.ConfigError, 'resume must be one of auto, force'),
    ('unknown nan policy', _validate(**{'nan.policy': 'ignore'}), jm.ConfigError,
     'nan.policy must be one of stop, skip, rollback'),
    ('no epochs and no steps', _validate(**{'train.num_epochs': 0}), jm.ConfigError,
     'set train.num_epochs or train.num_steps'),
    ('unknown optimizer', lambda tmp: jm.make_optimizer('adagradx', 0.1), jm.ConfigError,
     'unknown optimizer'),
    ('unknown schedule', lambda tmp: jm.make_schedule('linear', 0.1, 10), jm.ConfigError,
     'unknown schedule'),
    ('negative weight decay', lambda tmp: jm.make_optimizer('adamw', 0.1, weight_decay=-1),
     jm.ConfigError, 'weight_decay must be >= 0'),
    ('mesh larger than the machine', lambda tmp: parallel.make_mesh({'data': 16}),
     jm.ConfigError, 'needs 16 devices, but there are 8'),
    ('unknown mesh axis', lambda tmp: parallel.make_mesh({'tensor': 2}), jm.ConfigError,
     'unknown mesh axes'),
    ('shard_map with FSDP', _shard_map_with_fsdp, jm.ConfigError, "strategy='shard_map' replicates"),
    ('workdir that cannot be written', _unwritable_workdir, jm.ConfigError,
     'cannot write to workdir'),
    # Data.
    ('missing dataset while offline', _offline_mnist, jm.DataUnavailableError,
     "cannot download 'mnist' from tfds: no network. Pass local_dir=DIR holding the raw files"),
    ('unknown data source', lambda tmp: load_dataset('mnist', source='ftp'), jm.DataError,
     "unknown data source 'ftp'"),
    ('local directory without the files', lambda tmp: load_dataset('mnist', source='local',
                                                                   local_dir=str(tmp)),
     jm.DataError, 'train-images-idx3-ubyte[.gz]'),
    ('truncated IDX file', _truncated_idx, jm.DataError, 'x'),
    ('npz that needs pickle', _pickled_npz, jm.DataError, 'train.npz'),
    ('zoom of 1 or more', lambda tmp: make_augment(zoom=1.0), jm.DataError, 'must lie in [0, 1)'),
    # Checkpoints.
    ('checkpoint of another model', _other_model_checkpoint, jm.CheckpointError,
     'is from a different model: params/Dense_0/bias is (8,) there, (9,) here'),
    ('checkpoint of another run config', _other_config_checkpoint, jm.CheckpointError,
     "(optimizer.name: 'sgd' -> 'adamw'): use another workdir, or resume=force"),
    ('only corrupt checkpoints', _all_checkpoints_corrupt, jm.CheckpointError,
     'no readable checkpoint'),
    ('init_from that is not a checkpoint directory', _init_from_missing, jm.CheckpointError,
     'is not a directory of checkpoints'),
]


def test_there_are_at_least_25_cases():
  assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize('name, trigger, error, message', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(tmp_path, name, trigger, error, message):
  with pytest.raises(error) as raised:
    trigger(tmp_path)
  text = str(raised.value)
  assert message in text, text
  assert '\n' not in text and len(text) < 500, text


def _tree_digest(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.mark.slow  # A training run and five reruns in subprocesses: 30-35 s.
def test_bad_input_never_touches_a_good_run(tmp_path):
  """A finished run's workdir survives reruns with bad input, byte for byte."""
  data = tmp_path / 'data'
  data.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 64), ('t10k', 16)):
    write_idx(data / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(data / f'{prefix}-labels-idx1-ubyte.gz', rng.integers(0, 10, n).astype(np.uint8))
  workdir = tmp_path / 'run'
  base = [sys.executable, str(ROOT / 'experiments' / 'mnist.py'), f'--workdir={workdir}',
          f'--config.data.local_dir={data}', '--config.train.num_steps=4',
          '--config.train.batch_size=16', '--config.train.progress=False']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  first = subprocess.run(base + ['--config.model.widths=(8, 8, 8)'], env=env, capture_output=True,
                         timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  before = _tree_digest(workdir / 'checkpoints')
  assert before
  for bad in (['--config.optimizer.learning_rate=-1'], ['--config.optimizer.name=sgd'],
              ['--config.model.widths=(8, 8, 16)'], ['--config.train.batch_size=0'],
              ['--config.model.widths=(8, 8, 8, 8, 8)']):  # The last cannot even be built.
    result = subprocess.run(base + bad, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert [l for l in result.stderr.splitlines() if l.startswith('error: ')], result.stderr
    assert _tree_digest(workdir / 'checkpoints') == before, bad
