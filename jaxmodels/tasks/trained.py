"""A finished run, as the runner leaves it for what comes after training (export, predict,
serve, explain, distillation): `model.json` in the workdir says how to rebuild the model
and how raw inputs become model inputs; the checkpoints hold the variables.

    run = TrainedRun.load('runs/mnist')
    logits = run.apply(run.model_inputs(images_uint8))   # (N, num_classes)
"""
import dataclasses
import json
import os
from collections.abc import Callable

import flax.linen as nn
import jax

from jaxmodels import data as data_lib
from jaxmodels.checkpoint import Checkpointer, checkpoint_dir, read_meta, read_variables
from jaxmodels.errors import CheckpointError
from jaxmodels.finetune import merge_lora
from jaxmodels.pretrained import TextTokenizer
from jaxmodels.tasks.spec import build_module

MODEL_CARD = 'model.json'


def write_card(workdir: str, card: dict) -> str:
  """Writes model.json: task, model name and arguments, inputs, class names, the result's
  step and its test metrics."""
  path = os.path.join(workdir, MODEL_CARD)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(card, f, indent=2)
  return path


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
    path = os.path.join(workdir, MODEL_CARD)
    if not os.path.isfile(path):
      raise CheckpointError(f'{workdir} holds no finished run ({MODEL_CARD} is missing): train '
                            'in it first, or pass the workdir of a finished run', key='workdir')
    with open(path, encoding='utf-8') as f:
      card = json.load(f)
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
    """Raw inputs -> what the model takes: images (N, H, W, C) in 0..255 are normalised as
    in training (`data.to_model_inputs`, jit-able); texts of a word-level classifier are
    cleaned and encoded with the run's vocabulary, or by the run's pretrained tokenizer
    (tokenizer.json, recorded whole in model.json); token ids pass through."""
    spec = self.card['inputs']
    if spec.get('kind') == 'words':
      vocab = data_lib.WordVocabulary.from_words(spec['vocabulary'])
      return vocab.encode([data_lib.clean_text(t) for t in raw], spec['max_length'])
    if spec.get('kind') == 'tokenizer':
      return TextTokenizer.from_spec(spec).encode(raw, spec['max_length'])
    return data_lib.to_model_inputs(spec, raw)

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
