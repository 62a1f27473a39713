"""Tasks by name (model.json's 'task'): each module of `jaxmodels.tasks` that defines a
`TASK`. Commands that work on a finished run (export, explain) find its task, and its test
split, here."""
import importlib
import importlib.util
import os
import pkgutil

from jaxmodels.errors import ConfigError
from jaxmodels.tasks.spec import Task


def task_names() -> list[str]:
  """The names of the tasks in `jaxmodels.tasks` (each module with a `TASK`)."""
  names = []
  for info in pkgutil.iter_modules([os.path.dirname(__file__)]):
    task = getattr(importlib.import_module(f'jaxmodels.tasks.{info.name}'), 'TASK', None)
    if isinstance(task, Task):
      names.append(task.name)
  return sorted(names)


def task_named(name: str) -> Task:
  """The task called `name` (its module is `jaxmodels.tasks.<name>`); ConfigError if none."""
  if name.isidentifier() and importlib.util.find_spec(f'jaxmodels.tasks.{name}') is not None:
    task = getattr(importlib.import_module(f'jaxmodels.tasks.{name}'), 'TASK', None)
    if isinstance(task, Task) and task.name == name:
      return task
  raise ConfigError(f'no task {name!r}; the tasks are {", ".join(task_names())}', key='task')


def load_test_split(run) -> tuple:
  """(inputs as stored (N, ...), labels (N,)) of a finished run's (`runs.TrainedRun`) test
  split, loaded by its task with the run's saved config; DataError if the data is not here."""
  config = run.config()
  return task_named(run.card['task']).load_data(config).limited(config).test


def load_reference_split(run) -> tuple[str, tuple]:
  """('validation', (inputs, labels)) of a finished run's validation split, as its training
  held it out (`TaskData.limited`); ('test', ...) for a run that had none. What a served
  version's drift is judged against. DataError if the data is not here."""
  config = run.config()
  data = task_named(run.card['task']).load_data(config).limited(config)
  return ('validation', data.val) if data.val is not None else ('test', data.test)
