"""The experiments end to end for a few steps on mock data (logs, plots, summary), and every
recipe's config checked and its model built for its dataset's shape."""
import json
import pathlib

import jax
import matplotlib.image
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxmodels import cli
from jaxmodels.tasks import image_classification, language_model, runner, text_classification
from jaxmodels.cli import default_extensions
from jaxmodels.runs import build_model

EXTENSIONS = default_extensions()  # What the experiments apply.

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'experiments' / 'configs'


def _quick(config):
  config.data.source = 'tfds'
  config.train.update(num_steps=6, batch_size=16, log_every_steps=3, eval_every_steps=3,
                      eval_batch_size=40, steps_per_dispatch=2, progress=False)
  return config


@pytest.mark.parametrize('recipe, shape', [
    ('mnist.py', (28, 28, 1)), ('fashion_mnist.py', (28, 28, 1)),
    ('fashion_mnist.py:vit', (28, 28, 1)), ('fashion_mnist.py:fast', (28, 28, 1)),
    ('cifar10.py', (32, 32, 3)), ('cifar10.py:resnet', (32, 32, 3)),
    ('cifar10.py:vit', (32, 32, 3)), ('cifar10.py:three_conv', (32, 32, 3)),
    ('compress.py', (28, 28, 1)), ('compress.py:qat', (28, 28, 1)),
    ('compress.py:prune80', (28, 28, 1))])
def test_every_image_recipe_validates_and_builds(recipe, shape):
  config = cli.load_config_file(str(CONFIGS / recipe))
  runner.validate(image_classification.TASK, config, EXTENSIONS)
  data = image_classification.TaskData((np.zeros((2, *shape), np.uint8), np.zeros(2, np.int32)),
                                       (np.zeros((2, *shape), np.uint8), np.zeros(2, np.int32)),
                                       'test', 'test', info={'class_names': tuple('0123456789')})
  module = build_model(config, image_classification.TASK.model_arguments(config, data))
  logits = jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x)[0],
                          np.zeros((2, *shape), np.float32))
  assert logits.shape == (2, 10)


@pytest.mark.slow  # A whole run with its report: 30 s.
def test_image_experiment_end_to_end_on_mock_data(tmp_path, mock_tfds):
  config = _quick(cli.load_config_file(str(CONFIGS / 'mnist.py')))
  config.model.update(widths=(8, 16, 16), dense=16)
  with mock_tfds(num_examples=80):
    summary = runner.run(image_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)

  assert summary['steps'] == 6 and summary['dataset'] == 'mnist'
  assert summary['examples'] == {'train': 72, 'validation': 8, 'test': 80}
  assert summary['epochs'] == pytest.approx(6 / 4)  # 72 // 16 = 4 steps per epoch.
  assert 0.0 <= summary['test']['accuracy'] <= 1.0
  assert summary['examples_per_sec'] > 0 and summary['compile_seconds'] > 0
  saved = json.loads((tmp_path / 'summary.json').read_text())
  assert saved['test'] == pytest.approx(summary['test'])
  # The report's accuracy row and the summary agree: both come from one confusion matrix.
  accuracy_row = [l for l in saved['classification_report'].splitlines() if 'accuracy' in l][0]
  assert float(accuracy_row.split()[1]) == pytest.approx(summary['test']['accuracy'], abs=5e-5)
  assert 'test' in (tmp_path / 'summary.txt').read_text()

  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'train/loss' in r] == [3, 6]
  assert [r['step'] for r in rows if 'eval/accuracy' in r] == [3, 6]
  assert all('train/examples_per_sec' in r for r in rows if 'train/loss' in r)
  events = EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  assert {'train/loss', 'eval/accuracy', 'test/accuracy'} <= set(events.Tags()['scalars'])

  for png in ('training_curves.png', 'confusion_matrix.png', 'predictions.png'):
    image = matplotlib.image.imread(tmp_path / png)
    assert image.ndim == 3 and min(image.shape[:2]) > 100 and np.ptp(image) > 0, png


@pytest.mark.slow  # A whole run with samples: 20 s.
def test_language_model_end_to_end_on_mock_text(tmp_path, mock_tfds):
  config = cli.load_config_file(str(CONFIGS / 'lm.py'))
  config.data.seq_len = 16
  config.model.update(num_layers=1, embed_dim=32, mlp_dim=64)
  config.train.update(num_steps=6, batch_size=8, log_every_steps=3, eval_every_steps=3,
                      eval_batch_size=16, steps_per_dispatch=2, progress=False)
  config.sample.update(prompt='ab', max_new_tokens=10, num_samples=2)
  with mock_tfds(num_examples=40):
    summary = runner.run(language_model.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  assert summary['data_source'] == 'tfds:tiny_shakespeare' and summary['steps'] == 6
  assert summary['test']['perplexity'] == pytest.approx(np.exp(summary['test']['loss']))
  assert summary['tokens_per_sec'] == pytest.approx(summary['examples_per_sec'] * 16)
  assert 'images_per_sec' not in summary
  assert summary['flops_per_step'] > 0 and 0 < summary['unigram_entropy'] <= np.log(256)
  samples = summary['samples'].split('\n---\n')
  assert len(samples) == 2 and all(s.startswith('ab') for s in samples)
  assert (tmp_path / 'training_curves.png').exists() and (tmp_path / 'summary.txt').exists()
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all('train/tokens_per_sec' in r for r in rows if 'train/loss' in r)


@pytest.mark.parametrize('model', ['lstm', 'transformer'])
def test_text_classifier_end_to_end_on_mock_imdb(model, tmp_path, mock_tfds):
  config = cli.load_config_file(str(CONFIGS / 'text_classify.py'))
  config.model.update(name=model, embed_dim=16, hidden=16, num_layers=1, mlp_dim=32)
  config.data.update(max_length=24, min_count=1)
  config.train.update(num_steps=4, batch_size=16, log_every_steps=2, eval_batch_size=32,
                      progress=False)
  with mock_tfds(num_examples=48):
    summary = runner.run(text_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  assert summary['data_source'] == 'tfds:imdb_reviews' and summary['steps'] == 4
  assert 'weighted avg' in summary['classification_report']
  assert (tmp_path / 'confusion_matrix.png').exists()


@pytest.mark.slow  # A whole training run in a subprocess: 25-40 s.
def test_text_classifier_on_local_labelled_files(tmp_path):
  rng = np.random.default_rng(0)
  words = {'space': 'star orbit rocket planet moon', 'cooking': 'salt pan oven bread soup'}
  data = tmp_path / 'texts'
  data.mkdir()
  for name, vocab in words.items():
    examples = [' '.join(rng.choice(vocab.split(), 6)) for _ in range(60)]
    (data / name).write_text('\n%\n'.join(examples) + '\n%\n')
  config = cli.load_config_file(str(CONFIGS / 'text_classify.py'))
  config.data.update(local_dir=str(data), categories=('space', 'cooking'), max_length=12)
  config.model.update(embed_dim=16, hidden=16)
  config.train.update(num_epochs=20.0, batch_size=16, log_every_steps=10, progress=False)
  summary = runner.run(text_classification.TASK, config, str(tmp_path / 'run'), extensions=EXTENSIONS)
  # Disjoint vocabularies: the classes are separable, and the model learns to separate them.
  assert summary['test']['accuracy'] > 0.9, summary['classification_report']
  assert summary['examples'] == {'train': 86, 'validation': 10, 'test': 24}
