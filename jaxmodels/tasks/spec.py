"""What a task tells the runner: its config fields, its data, its model's arguments, its loss
and metrics, and what it adds to the report. `runner.run(task, config, workdir)` does
the rest, the same way for every task."""
import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxmodels import data as data_lib
from jaxmodels import models, parallel
from jaxmodels import train as train_lib
from jaxmodels.errors import ConfigError
from jaxmodels.schema import Schema


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


@dataclasses.dataclass
class RunContext:
  """What task hooks get while the runner works: the config, the workdir, the data, the
  model, the writer and (after training) the final state and history."""
  config: Any
  workdir: str
  data: TaskData
  module: Any
  model: Any
  writer: Any
  mesh: Any
  is_main: bool
  state: Any = None
  history: Any = None
  input_spec: dict = dataclasses.field(default_factory=dict)

  def predict(self, inputs) -> np.ndarray:
    """The final model's outputs for host `inputs` (preprocessed as for evaluation), on every
    process (a collective: every process must call it)."""
    state = parallel.host_copy(self.state)
    predict = jax.jit(train_lib.make_predict_fn(self.model.apply))
    return np.asarray(predict(state, data_lib.to_model_inputs(self.input_spec, inputs)))

  def say(self, text: str) -> None:
    """Prints on process 0 only (every process runs the same code)."""
    if self.is_main:
      print(text, flush=True)


class Extension:
  """A part of a run that every task can use, switched on by its own config fields
  (starting from other weights, fine-tuning, compression): it may change the model, the
  optimiser, the fresh state (not a resumed one), and add callbacks and report entries.
  `run_config.EXTENSIONS` lists them; the runner applies each, in order."""
  schema: Schema = Schema({})

  def model(self, config, module: nn.Module) -> nn.Module:
    return module

  def optimizer(self, config, tx, steps_per_epoch: int):
    """The run's optax transformation -> the one it trains with (steps_per_epoch: for
    durations given in epochs)."""
    return tx

  def initialize(self, config, module: nn.Module, state):
    """The fresh, sharded state -> the state training starts from."""
    return state

  def callbacks(self, ctx: RunContext) -> list:
    return []

  def report(self, ctx: RunContext, test: dict) -> dict:
    return {}


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

  def model_arguments(self, config, data: TaskData) -> dict:
    """The constructor arguments of the model named by config.model.name: its config options
    and the data's arguments (JSON-able; model.json records them).

    Options of other models are ignored with a warning (one recipe may serve several
    models, e.g. lstm and bert); an option of no model is an error.
    """
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)} - {'parent', 'name', 'dtype'}
    accepted = fields(models.MODELS[config.model.name])
    options = {k: v for k, v in config.model.items() if k != 'name'}
    unknown = sorted(set(options) - set().union(*map(fields, models.MODELS.values())))
    if unknown:
      raise ConfigError(f'model.{unknown[0]} is an option of no model; {config.model.name} '
                        f'takes {", ".join(sorted(accepted))}', key=f'model.{unknown[0]}')
    ignored = sorted(set(options) - accepted)
    if ignored:
      logging.warning('model %s ignores the options %s', config.model.name, ', '.join(ignored))
    arguments = {**options, **self.model_kwargs(config, data)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()
            if k in accepted}

  def build_model(self, config, data: TaskData) -> nn.Module:
    dtype = jnp.bfloat16 if config.precision.compute_dtype == 'bfloat16' else jnp.float32
    return build_module(config.model.name, self.model_arguments(config, data), dtype)


def build_module(name: str, arguments: dict, dtype=jnp.float32) -> nn.Module:
  """`models.MODELS[name]` built from JSON-able arguments (lists become tuples)."""
  arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()}
  return models.MODELS[name](**arguments, dtype=dtype)
