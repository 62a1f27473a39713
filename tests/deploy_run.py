"""A tiny finished image-classification run for the deployment tests (export, predict, serve):
an MLP on 8x8 grayscale images where class k lights row k's block, trained for a few steps."""
import numpy as np

from jaxmodels.tasks import image_classification, runner
from jaxmodels.cli import default_extensions

EXTENSIONS = default_extensions()  # What the experiments apply.

CLASSES = [f'class{k}' for k in range(8)]


def images(count: int, seed: int):
  """(images (count, 8, 8, 1) uint8, labels (count,)): class k has row k bright, noise elsewhere."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, len(CLASSES), count)
  pixels = rng.integers(0, 60, (count, 8, 8, 1))
  pixels[np.arange(count), labels] = 230
  return pixels.astype(np.uint8), labels


_TRAINED = {}


def trained_once(tmp_path_factory) -> tuple[str, object]:
  """(workdir, its directory): one run per test session, shared by the deployment tests."""
  if 'run' not in _TRAINED:
    directory = tmp_path_factory.mktemp('deploy')
    _TRAINED['run'] = (train(directory), directory)
  return _TRAINED['run']


def train(directory) -> str:
  """Trains the run in directory/run (data in directory/data) and returns its workdir."""
  data = directory / 'data'
  data.mkdir()
  train_images, train_labels = images(320, 0)
  test_images, test_labels = images(96, 1)
  np.savez(data / 'train.npz', image=train_images, label=train_labels,
           class_names=np.array(CLASSES))
  np.savez(data / 'test.npz', image=test_images, label=test_labels)
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  config.data.update(name='blobs', local_dir=str(data))
  config.model = dict(name='mlp', hidden=(96,), dropout=0.0)
  config.optimizer.update(learning_rate=1e-2, warmup_epochs=0.0)
  config.train.update(batch_size=32, num_steps=20, eval_every_steps=20, log_every_steps=10,
                      eval_batch_size=64, steps_per_dispatch=1, progress=False)
  config.report.num_test_predictions = 12
  workdir = str(directory / 'run')
  runner.run(image_classification.TASK, config, workdir, extensions=EXTENSIONS)
  return workdir
