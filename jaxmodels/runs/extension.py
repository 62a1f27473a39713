"""What a run hands to the parts that any task can switch on: `RunContext` (the config, the
data, the model, and after training the state) and `Extension`, a part switched on by its
own config fields (starting from other weights, fine-tuning, compression, report entries).

The run applies the extensions it is given, as one: `chain(a, b, c)` is an `Extension`
whose every hook runs a's, then b's, then c's (optax's `chain` of transformations, for
the parts of a run).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels import parallel
from jaxmodels import train as train_lib
from jaxmodels.schema import Schema


@dataclasses.dataclass
class RunContext:
  """What extension and task hooks get while a run works: the config, the workdir, the data
  (a `tasks.TaskData`), the model, the writer and (after training) the final state and
  history."""
  config: Any
  workdir: str
  data: Any
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
  """A part of a run that any task can use, switched on by its own config fields: it may
  change the input spec, the model, the optimiser, the fresh state (not a resumed one), and
  add callbacks and report entries. Each hook's default leaves the run as it is."""
  schema: Schema = Schema({})

  def inputs(self, config, spec: dict) -> dict:
    """The task's input spec (how stored inputs become model inputs, `data.to_model_inputs`;
    model.json's 'inputs') -> the one the run trains and evaluates with. Applied on a
    resumed run too: the spec is not in the checkpoint."""
    return spec

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


class _Chain(Extension):
  """The extensions in order, as one (see `chain`)."""

  def __init__(self, extensions):
    self.parts = tuple(extensions)
    self.schema = Schema({})
    for part in self.parts:
      self.schema = self.schema + part.schema

  def inputs(self, config, spec):
    for part in self.parts:
      spec = part.inputs(config, spec)
    return spec

  def model(self, config, module):
    for part in self.parts:
      module = part.model(config, module)
    return module

  def optimizer(self, config, tx, steps_per_epoch):
    for part in self.parts:
      tx = part.optimizer(config, tx, steps_per_epoch)
    return tx

  def initialize(self, config, module, state):
    for part in self.parts:
      state = part.initialize(config, module, state)
    return state

  def callbacks(self, ctx):
    return [cb for part in self.parts for cb in part.callbacks(ctx)]

  def report(self, ctx, test):
    entries = {}
    for part in self.parts:
      entries.update(part.report(ctx, test))
    return entries


def chain(*extensions: Extension) -> Extension:
  """One extension that applies `extensions` in order: the input spec, model, optimiser and
  fresh state pass through each; callbacks and report entries are collected (a later one wins)."""
  return _Chain(extensions)
