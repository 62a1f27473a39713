"""What a run hands to the parts that every task can use: `RunContext` (the config, the
data, the model, and after training the state) and `Extension`, a part switched on by its
own config fields (starting from other weights, fine-tuning, compression)."""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels import parallel
from jaxmodels import train as train_lib
from jaxmodels.schema import Schema
from jaxmodels.tasks.spec import TaskData


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
