"""The one runner, for every task: model selection on a validation split held out from
train, history across resumes, the writer closed on error, output from process 0 only,
logical sharding for every model, and durations in epochs for every task."""
import json

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import jaxmodels as jm
from jaxmodels import parallel, report
from jaxmodels.checkpoint import Checkpointer
from jaxmodels.tasks import image_classification, language_model, runner, text_classification
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.cli import default_extensions
from jaxmodels.runs import build_model

EXTENSIONS = default_extensions()  # What the experiments apply.

QUICK = dict(batch_size=16, log_every_steps=2, eval_batch_size=64, steps_per_dispatch=1,
             progress=False)


def _image_config(data_dir, **train):
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  config.data.update(name='blobs', local_dir=str(data_dir))
  config.model = dict(name='mlp', hidden=(16,), dropout=0.0)
  config.optimizer.update(learning_rate=3e-2, warmup_epochs=0.0)
  config.train.update(**{**QUICK, **train})
  return config


@pytest.fixture
def separable_images(tmp_path):
  """Train: classes 0-8, class k lighting pixel k. Test: only class 9, never seen in training."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 9, 200)
  images = rng.integers(0, 40, (200, 16))
  images[np.arange(200), labels] = 255
  images = images.reshape(200, 4, 4, 1)
  directory = tmp_path / 'blobs'
  directory.mkdir()
  np.savez(directory / 'train.npz', image=images.astype(np.uint8), label=labels,
           class_names=np.array([str(i) for i in range(10)]))
  np.savez(directory / 'test.npz', image=np.zeros((30, 4, 4, 1), np.uint8), label=np.full(30, 9))
  return directory


def test_model_selection_sees_validation_examples_and_test_is_reported_once(
    separable_images, tmp_path):
  config = _image_config(separable_images, num_steps=60, eval_every_steps=20)
  config.early_stopping.patience = 5
  summary = runner.run(image_classification.TASK, config, str(tmp_path / 'run'), extensions=EXTENSIONS)
  assert summary['examples'] == {'train': 180, 'validation': 20, 'test': 30}
  # Evaluation during training ran on held-out training examples (learnable), not on the
  # test split (class 9 only, never trained on).
  assert summary['validation']['accuracy'] > 0.9 and summary['test']['accuracy'] == 0.0
  rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if 'test/accuracy' in r] == [summary['steps']]  # Once.
  assert all(r['eval/accuracy'] > 0 for r in rows if 'eval/accuracy' in r)


def test_a_finished_run_is_rebuilt_from_its_workdir(separable_images, tmp_path):
  """model.json and the checkpoints give back the model: on the validation images its
  predictions are the run's (accuracy as reported), from raw uint8 pixels."""
  config = _image_config(separable_images, num_steps=30, eval_every_steps=30)
  summary = runner.run(image_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  run = TrainedRun.load(str(tmp_path))
  assert run.card['step'] == 30 and run.class_names == [str(i) for i in range(10)]
  assert run.card['inputs']['kind'] == 'image' and run.card['inputs']['shape'] == [4, 4, 1]
  data = image_classification.TASK.load_data(config).limited(config)
  logits = run.apply(run.model_inputs(data.val[0]))
  accuracy = float(np.mean(np.argmax(logits, -1) == data.val[1]))
  assert accuracy == pytest.approx(summary['validation']['accuracy'], abs=1e-6)


def test_history_is_kept_across_a_resume_for_every_task(tmp_path, monkeypatch, mock_tfds):
  plotted = []
  monkeypatch.setattr(report, 'plot_history', lambda history, path: plotted.append(history))
  config = runner.default_config(text_classification.TASK, EXTENSIONS)
  config.model = dict(name='lstm', embed_dim=8, hidden=8)
  config.data.update(source='tfds', max_length=12, min_count=1)
  config.train.update(**{**QUICK, 'num_steps': 4})
  with mock_tfds(num_examples=48):
    runner.run(text_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)
    config.train.num_steps = 8  # The length of a run may change on resume.
    summary = runner.run(text_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  assert summary['resumed'] and summary['steps'] == 8
  assert [r['step'] for r in plotted[-1].train] == [2, 4, 6, 8]


def test_the_writer_is_closed_when_a_run_fails(tmp_path, mock_tfds):
  """The run diverges and stops (NonFiniteError); the TensorBoard events logged before are on
  disk, because the writer was closed on the way out (tensorboardX flushes every 30 s)."""
  config = runner.default_config(text_classification.TASK, EXTENSIONS)
  config.model = dict(name='lstm', embed_dim=8, hidden=8)
  config.data.update(source='tfds', max_length=12, min_count=1)
  config.optimizer.update(name='sgd', learning_rate=1e30, warmup_epochs=0.0, clip_norm=0.0)
  config.train.update(**{**QUICK, 'num_steps': 6, 'log_every_steps': 1})
  with mock_tfds(num_examples=48), pytest.raises(jm.NonFiniteError):
    runner.run(text_classification.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  logged = [json.loads(l)['step'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
            if 'train/loss' in l]  # JSONL lines reach the disk at once.
  events = EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  assert logged and [e.step for e in events.Scalars('train/loss')] == logged


def test_only_process_zero_prints(tmp_path, monkeypatch, capsys, mock_tfds):
  monkeypatch.setattr(parallel, 'is_main_process', lambda: False)
  config = runner.default_config(language_model.TASK, EXTENSIONS)
  config.model = dict(name='gpt', num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32)
  config.data.seq_len = 16
  config.sample.update(max_new_tokens=4, num_samples=1)
  config.train.update(**{**QUICK, 'num_steps': 2, 'eval_every_steps': 2})
  with mock_tfds(num_examples=20):
    runner.run(language_model.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  assert capsys.readouterr().out == ''
  assert not (tmp_path / 'summary.json').exists() and not (tmp_path / 'metrics.jsonl').exists()


def test_language_model_length_in_epochs(tmp_path, mock_tfds):
  config = runner.default_config(language_model.TASK, EXTENSIONS)
  config.model = dict(name='gpt', num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32)
  config.data.seq_len = 16
  config.sample.update(max_new_tokens=4, num_samples=1)
  config.train.update(**{**QUICK, 'num_steps': 0, 'num_epochs': 2.0, 'batch_size': 8})
  with mock_tfds(num_examples=40):
    summary = runner.run(language_model.TASK, config, str(tmp_path), extensions=EXTENSIONS)
  windows = summary['examples']['train']
  assert summary['epochs'] == 2.0 and summary['steps'] == 2 * (windows // 8) > 0


def test_image_task_shards_a_vit_by_its_logical_axis_names(tmp_path):
  """mesh.model=2 splits the ViT's attention heads over 'model' (tensor parallelism)."""
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  config.model = dict(name='vit', patch_size=4, num_layers=1, num_heads=4, embed_dim=32,
                      mlp_dim=64)
  config.parallel.mesh.update(data=4, model=2)
  data = image_classification.TaskData(
      (np.zeros((8, 8, 8, 1), np.uint8), np.zeros(8, np.int32)),
      (np.zeros((8, 8, 8, 1), np.uint8), np.zeros(8, np.int32)), 'test', 'test',
      info={'class_names': tuple('0123456789')})
  module = build_model(config, image_classification.TASK.model_arguments(config, data))
  mesh = parallel.make_mesh(config.parallel.mesh.to_dict())
  tx = jm.make_optimizer('adamw', 1e-3)
  state, meta = runner.restore_or_create(module, jm.linen_model(module), tx, config, mesh,
                                         np.zeros((1, 8, 8, 1), np.float32),
                                         Checkpointer(str(tmp_path / 'ck')))
  query = state.params['encoder']['layer0']['attention']['query']['kernel']  # (embed, heads, kv)
  assert meta is None and query.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'model', None)
  assert query.addressable_shards[0].data.shape == (32, 2, 8)
