"""A finished run, as the runner leaves it for what comes after training (export, predict,
serve, explain, distillation): `model.json` in the workdir says how to rebuild the model
and how raw inputs become model inputs; the checkpoints hold the variables.

    run = TrainedRun.load('runs/mnist')
    logits = run.apply(run.model_inputs(images_uint8))   # (N, num_classes)
"""
import dataclasses
import os
from collections.abc import Callable

import flax.linen as nn
import jax

from jaxmodels.checkpoint import Checkpointer, checkpoint_dir, read_meta, read_variables
from jaxmodels.errors import CheckpointError
from jaxmodels.finetune import merge_lora
from jaxmodels.runs.model_card import MODEL_CARD, inputs_from_raw, read_card, write_card
from jaxmodels.runs.model_config import build_module


@dataclasses.dataclass
class TrainedRun:
  """A trained model rebuilt from its workdir: `module`, its `variables` (host numpy arrays,
  params and model state) and `card` (model.json)."""
  workdir: str
  card: dict
  module: nn.Module
  variables: dict
  _apply: Callable | None = dataclasses.field(default=None, init=False, repr=False,
                                              compare=False)

  @classmethod
  def load(cls, workdir: str, step: int | None = None) -> 'TrainedRun':
    """The run's result (model.json's step, or `step`); CheckpointError if it has none."""
    card = read_card(workdir)
    module = build_module(card['model']['name'], card['model']['arguments'])
    variables = read_variables(checkpoint_dir(workdir), step or card['step'])
    if 'lora' in card['model']:  # A LoRA run: its adapters folded into plain kernels.
      variables['params'] = merge_lora(variables['params'], card['model']['lora']['alpha'])
    return cls(workdir, card, module, variables)

  def config(self):
    """The run's config (a ConfigDict), as saved with its result's checkpoint."""
    import ml_collections
    return ml_collections.ConfigDict(read_meta(checkpoint_dir(self.workdir),
                                               self.card['step'])['config'])

  @property
  def class_names(self) -> list[str] | None:
    return self.card.get('class_names')

  def model_inputs(self, raw):
    """Raw inputs -> what the model takes (`model_card.inputs_from_raw`)."""
    return inputs_from_raw(self.card['inputs'], raw)

  def save(self, workdir: str) -> None:
    """Writes this model as a finished run in a new `workdir` (model.json and a checkpoint of
    its variables), e.g. after compression: `load` reads it back, and `init_from` fine-tunes
    from it. CheckpointError if `workdir` already holds a run."""
    if os.path.exists(os.path.join(workdir, MODEL_CARD)) or os.path.isdir(checkpoint_dir(workdir)):
      raise CheckpointError(f'{workdir} already holds a run; choose a new directory',
                            key='workdir')
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(checkpoint_dir(workdir), async_save=False)
    state = {k: v for k, v in self.variables.items() if k != 'params'}
    checkpointer.save(self.card['step'], {'params': self.variables['params'],
                                          'model_state': state}, force=True)
    checkpointer.close()
    write_card(workdir, self.card)

  def apply(self, inputs):
    """The model's outputs (inference mode) for model inputs (see `model_inputs`); compiled
    once per input shape."""
    if self._apply is None:
      self._apply = jax.jit(lambda variables, x: self.module.apply(variables, x, train=False))
    return self._apply(self.variables, inputs)
