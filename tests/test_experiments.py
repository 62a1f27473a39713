"""Each experiment end to end for a few steps on mock data: logs, plots and summary."""
import json
import pathlib

import matplotlib.image
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxmodels import cli
from jaxmodels.tasks import image_classification

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'configs'


def _quick(config):
  config.train.update(num_steps=6, batch_size=16, log_every_steps=3, eval_every_steps=3,
                      eval_batch_size=40, steps_per_dispatch=2, progress=False)
  return config


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist', 'cifar10'])
def test_experiment_runs_end_to_end_on_mock_data(name, tmp_path):
  config = _quick(cli.load_config_file(str(CONFIGS / f'{name}.py')))
  if name == 'cifar10':
    config.model.widths = (8, 16, 16)  # Same network shape, narrower: keeps the test quick.
  with tfds.testing.mock_data(num_examples=80):
    summary = image_classification.train_and_evaluate(config, str(tmp_path))

  assert summary['steps'] == 6 and summary['dataset'] == name
  assert 0.0 <= summary['test']['accuracy'] <= 1.0
  assert summary['images_per_sec'] > 0 and summary['compile_seconds'] > 0
  saved = json.loads((tmp_path / 'summary.json').read_text())
  assert saved['test'] == pytest.approx(summary['test'])
  # The report's accuracy row and the summary agree: both come from one confusion matrix.
  accuracy_row = [l for l in saved['classification_report'].splitlines() if 'accuracy' in l][0]
  assert float(accuracy_row.split()[1]) == pytest.approx(summary['test']['accuracy'], abs=5e-5)
  assert 'test' in (tmp_path / 'summary.txt').read_text()

  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [3, 6]
  assert [r['step'] for r in rows if 'eval/accuracy' in r] == [3, 6]
  events = EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  assert {'train/loss', 'eval/accuracy', 'test/accuracy'} <= set(events.Tags()['scalars'])

  for png in ('training_curves.png', 'confusion_matrix.png', 'predictions.png'):
    image = matplotlib.image.imread(tmp_path / png)
    assert image.ndim == 3 and min(image.shape[:2]) > 100 and np.ptp(image) > 0, png
