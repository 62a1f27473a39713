"""Compression end to end on a tiny synthetic dataset: a distillation run trains and
checkpoints only the student, whose teacher (a finished run) is read from its workdir; and a
channel-pruned run saves, loads and predicts as the pruning computed it."""
import jax
import numpy as np
import pytest

from jaxmodels.checkpoint import checkpoint_dir, read_variables
from jaxmodels.compress.channels import prune_run_channels
from jaxmodels.tasks import distillation, image_classification, runner
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.cli import default_extensions


EXTENSIONS = default_extensions()  # What the experiments apply.

def _spots(directory):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 160)
  images = rng.integers(0, 80, (160, 10, 10, 1))
  images[np.arange(160), 2 * labels, 2 * labels] = 255
  directory.mkdir()
  np.savez(directory / 'train.npz', image=images[:128].astype(np.uint8), label=labels[:128],
           class_names=np.array(list('abcd')))
  np.savez(directory / 'test.npz', image=images[128:].astype(np.uint8), label=labels[128:])
  return images[128:]


def _config(task, directory, model):
  config = runner.default_config(task, EXTENSIONS)
  config.data.update(name='spots', local_dir=str(directory), val_fraction=0.0)
  config.model = model
  config.train.update(batch_size=16, num_steps=8, steps_per_dispatch=4, progress=False)
  return config


@pytest.mark.slow
def test_distillation_checkpoints_only_the_student_and_channel_pruning_round_trips(tmp_path):
  images = _spots(tmp_path / 'spots')
  teacher = _config(image_classification.TASK, tmp_path / 'spots',
                    dict(name='three_conv_cnn', widths=(8, 12), dense=20, batch_norm=True))
  runner.run(image_classification.TASK, teacher, str(tmp_path / 'teacher'), extensions=EXTENSIONS)

  student = _config(distillation.TASK, tmp_path / 'spots',
                    dict(name='three_conv_cnn', widths=(4, 6), dense=8, batch_norm=True))
  student.distill.teachers = f"{tmp_path / 'teacher'},{tmp_path / 'teacher'}"
  student.augment.flip = True
  summary = runner.run(distillation.TASK, student, str(tmp_path / 'student'), extensions=EXTENSIONS)
  assert np.isfinite(summary['test']['loss'])
  saved = read_variables(checkpoint_dir(str(tmp_path / 'student')))
  kernel_shapes = {k: v['kernel'].shape for k, v in saved['params'].items() if 'kernel' in v}
  assert kernel_shapes == {'Conv_0': (3, 3, 1, 4), 'Conv_1': (3, 3, 4, 6),
                           'Dense_0': (4 * 6, 8), 'Dense_1': (8, 4)}  # The student alone.

  run = TrainedRun.load(str(tmp_path / 'teacher'))
  pruned = prune_run_channels(run, 0.5)
  pruned.save(str(tmp_path / 'pruned'))
  loaded = TrainedRun.load(str(tmp_path / 'pruned'))
  assert loaded.card['model']['arguments']['widths'] == [4, 6]
  inputs = run.model_inputs(images)
  np.testing.assert_allclose(loaded.apply(inputs), pruned.apply(inputs), atol=1e-6)
  assert jax.tree.map(np.shape, loaded.variables) == jax.tree.map(np.shape, pruned.variables)
