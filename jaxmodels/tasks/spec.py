"""What a task tells the runner: its config fields, its data, its model's arguments, its loss
and metrics, and what it adds to the report. `runner.run(task, config, workdir)` does
the rest, the same way for every task."""
import dataclasses
from collections.abc import Callable

import numpy as np

from jaxmodels.schema import Schema
from jaxmodels.runs import model_config


@dataclasses.dataclass
class TaskData:
  """The whole of each split, the same on every process (the runner lays it out on the mesh).

  train / val / test: (inputs (N, ...), labels (N, ...)) host arrays; val None lets the
  runner hold out `data.val_fraction` of train. info: what the task's model and
  report need (class names, vocabulary, ...). tokens_per_example: for tokens/s.
  """
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  source: str
  dataset: str
  val: tuple[np.ndarray, np.ndarray] | None = None
  info: dict = dataclasses.field(default_factory=dict)
  description: str = ''
  tokens_per_example: int | None = None

  def limited(self, config) -> 'TaskData':
    """data.num_train / num_test applied (to the whole split, whatever the process count), and
    data.val_fraction of train held out as the validation split if the task gave none."""
    cut = lambda split, n: tuple(a[:n or None] for a in split)
    train, test, val = cut(self.train, config.data.num_train), cut(self.test,
                                                                   config.data.num_test), self.val
    if val is None and config.data.val_fraction:
      order = np.random.default_rng(config.seed).permutation(len(train[0]))
      held = np.sort(order[:max(1, int(len(order) * config.data.val_fraction))])
      kept = np.sort(order[len(held):])
      val, train = tuple(a[held] for a in train), tuple(a[kept] for a in train)
    return dataclasses.replace(self, train=train, val=val, test=test)


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: a small spec that `runner.run` turns into a complete run.

  schema: the task's own config fields (the runner adds the common ones).
  model_names: the `models.MODELS` entries this task can train (config model.name).
  load_data(config) -> TaskData. model_kwargs(config, data) -> dict: the model's
  data-dependent arguments (num_classes, vocab_size, ...). loss(config) -> loss_fn.
  metrics(data, for_eval) -> metrics_fn (for_eval: the final test pass's, e.g. with
  a confusion matrix). inputs(config, data) -> how stored (or sent) inputs become model
  inputs, as JSON (`data.to_model_inputs`; model.json records it for export, serving and
  explanations). augment(config) -> fn(rng, inputs) applied to training batches before
  that, or None. callbacks(ctx) -> extra fit callbacks.
  report(ctx, test) -> summary entries from the test metrics (and plots); a 'test'
  entry is merged into the summary's test metrics. defaults: new defaults for fields
  of the common schema (e.g. checkpoint.best_metric).
  """
  name: str
  schema: Schema
  model_names: tuple[str, ...]
  load_data: Callable
  model_kwargs: Callable
  loss: Callable
  metrics: Callable
  report: Callable
  augment: Callable = lambda config: None
  callbacks: Callable = lambda ctx: []
  defaults: dict = dataclasses.field(default_factory=dict)
  inputs: Callable = lambda config, data: {}

  def model_arguments(self, config, data: TaskData) -> dict:  # See model_config.
    options = model_config.model_options(config)  # A bad option fails before model_kwargs.
    return model_config.model_arguments(config, options, self.model_kwargs(config, data))
