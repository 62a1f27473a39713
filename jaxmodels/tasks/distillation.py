"""Distillation: a student image classifier trained on the labels and on a teacher's softened
predictions (`compress.distill`). The teacher is any finished image-classification run
(`distill.teachers`: its workdir), or several, averaged in probability space. Teacher and
student see the same augmented batch; only the student is trained and checkpointed.
`experiments/distill.py` runs it."""
import dataclasses
import functools
import os

from jaxmodels.compress import distill
from jaxmodels.errors import CheckpointError, ConfigError
from jaxmodels.schema import Field, Schema, at_least
from jaxmodels.tasks import image_classification
from jaxmodels.runs.model_card import MODEL_CARD
from jaxmodels.runs.trained import TrainedRun

SCHEMA = image_classification.SCHEMA + Schema({
    'distill.teachers': Field('', 'Workdirs of finished image-classification runs, comma-'
                              'separated: the teacher, or an ensemble averaged in probability '
                              'space.'),
    'distill.temperature': Field(4.0, 'Temperature T of the soft targets softmax(logits / T).',
                                 **at_least(0, strict=True)),
    'distill.alpha': Field(0.9, 'Weight of the distillation term (T^2 KL); 1 - alpha weighs '
                           'the label cross-entropy.', check=lambda v: 0 <= v <= 1,
                           requirement='must be in [0, 1]'),
})


def teachers(config) -> tuple[tuple[TrainedRun, ...], object]:
  """(the runs of `distill.teachers`, fn(student inputs) -> (K, B, C) teacher logits), loaded
  once per workdir and model.json version."""
  workdirs = tuple(w.strip() for w in config.distill.teachers.split(',') if w.strip())
  if not workdirs:
    raise ConfigError('set distill.teachers to the workdir of a finished run (or several, '
                      'comma-separated)', key='distill.teachers')
  stamps = tuple(os.path.getmtime(os.path.join(w, MODEL_CARD)) if os.path.isfile(
      os.path.join(w, MODEL_CARD)) else None for w in workdirs)
  return _load(workdirs, stamps)


@functools.lru_cache(maxsize=4)
def _load(workdirs, stamps):
  del stamps  # Part of the cache key: a retrained teacher is read again.
  try:
    runs = tuple(TrainedRun.load(w) for w in workdirs)
  except CheckpointError as e:
    raise ConfigError(f'distill.teachers: {e}', key='distill.teachers') from None
  shapes = {tuple(run.card['inputs'].get('shape') or ()) for run in runs}
  if len(shapes) != 1 or any(run.card['inputs'].get('kind') != 'image' for run in runs):
    raise ConfigError('distill.teachers must be image classifiers of one input shape, got '
                      f'{sorted(shapes)}', key='distill.teachers')
  fn = distill.teacher_fn([r.module for r in runs], [r.variables for r in runs],
                          [distill.renormalize(runs[0].card['inputs'], r.card['inputs'])
                           for r in runs])
  return runs, fn


def inputs(config, data) -> dict:
  """The first teacher's input spec: the student's inputs are exactly what it was trained on."""
  runs, _ = teachers(config)
  spec, names = runs[0].card['inputs'], runs[0].class_names or []
  if list(data.train[0].shape[1:]) != list(spec['shape']) or len(names) != len(
      data.info['class_names']):
    raise ConfigError(f'the teachers take {spec["shape"]} images of {len(names)} classes; the '
                      f'data has {list(data.train[0].shape[1:])} and '
                      f'{len(data.info["class_names"])}', key='distill.teachers')
  return spec


def loss(config):
  _, teacher_logits = teachers(config)
  return distill.distillation_objective(teacher_logits, config.distill.temperature,
                                        config.distill.alpha, config.train.label_smoothing)


TASK = dataclasses.replace(image_classification.TASK, name='distillation', schema=SCHEMA,
                           loss=loss, inputs=inputs)
