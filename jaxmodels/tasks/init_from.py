"""`init_from`: a run that starts from other weights (fine-tuning): another run's params, or
a Hugging Face model directory ('hf:DIR': GPT-2, BERT or ViT, see `jaxmodels.pretrained`)."""
import os
import re

import jax
import numpy as np
from flax import traverse_util

from jaxmodels import pretrained
from jaxmodels.checkpoint import Checkpointer, checkpoint_dir
from jaxmodels.errors import CheckpointError, ConfigError
from jaxmodels.finetune import is_adapter
from jaxmodels.parallel import place_global
from jaxmodels.runs.extension import Extension
from jaxmodels.runs.model_card import MODEL_CARD, read_card
from jaxmodels.schema import REGEX, Field, Schema

HF = 'hf:'


class InitFrom(Extension):
  """Replaces the fresh params with those of `init_from`: a workdir, or its checkpoints/
  directory (a finished run's result, model.json's step, else the newest checkpoint), or
  'hf:DIR'. Params matching `init_from_exclude` (a new head) and LoRA adapters keep their
  fresh init; every other param must be there, in its shape. A resumed run keeps its own
  params, and (resumed or not) the init run's input normalisation (`inputs`)."""
  schema = Schema({
      'init_from': Field('', "Weights this run starts from (fine-tuning): a workdir (or its "
                         "checkpoints/), or 'hf:DIR', a Hugging Face model directory "
                         '(config.json + model.safetensors) of GPT-2, BERT or ViT whose '
                         'config.json the model.* options must match.', resumable=True),
      'init_from_exclude': Field('', 'Regex (searched in param paths such as head/kernel): '
                                 'these params keep their fresh init instead (a new head).',
                                 resumable=True, **REGEX),
  })
  notes: list = []  # What the loader said of 'hf:DIR' (heads at their fresh init, ...).

  def inputs(self, config, spec):
    """The init run's image normalisation (its model.json 'inputs': mean and std) when it
    takes images of the same shape: its weights were trained on those model inputs, so a
    fine-tune on other data must feed them the same. Anything else keeps `spec`."""
    card = _card_of(config.init_from)
    theirs = (card or {}).get('inputs') or {}
    if spec.get('kind') == 'image' and theirs.get('kind') == 'image' and list(
        theirs.get('shape', ())) == list(spec.get('shape', ())):
      return {**spec, 'mean': theirs['mean'], 'std': theirs['std']}
    return spec

  def model(self, config, module):
    """For 'hf:DIR', checks that the model is the one its config.json describes."""
    if not config.init_from.startswith(HF):
      return module
    name, arguments = pretrained.pretrained_model(config.init_from[len(HF):])
    if config.model.name != name:
      raise ConfigError(f'init_from={config.init_from!r} holds a {name} model: set '
                        f'model.name={name}', key='model.name')
    for key, value in arguments.items():
      if key not in ('dropout', 'num_classes') and getattr(module, key) != value:
        raise ConfigError(f'model.{key}={getattr(module, key)!r} does not match the '
                          f'{value!r} of {config.init_from}: set model.{key}={value!r}',
                          key=f'model.{key}')
    return module

  def initialize(self, config, module, state):
    self.notes = []
    if not config.init_from:
      return state
    flat = traverse_util.flatten_dict(state.params, sep='/')
    exclude = config.init_from_exclude
    wanted = {path: leaf for path, leaf in flat.items()
              if not is_adapter(path) and not (exclude and re.search(exclude, path))}
    if config.init_from.startswith(HF):
      loaded, notes = pretrained.load_params(config.init_from[len(HF):],
                                             {p: leaf.shape for p, leaf in wanted.items()})
      self.notes = notes
      if jax.process_index() == 0:  # Once, one line each; report() puts them in the summary.
        for note in notes:
          print(f'init_from: {note}', flush=True)
      flat.update({path: place_global(np.asarray(array, flat[path].dtype), flat[path].sharding)
                   for path, array in loaded.items()})
    else:
      params, model_state = self._restore(config.init_from, wanted, state.model_state)
      flat.update(traverse_util.flatten_dict(params, sep='/'))
      # The run's batch statistics too: its weights were trained to work with them.
      state = state.replace(model_state=model_state)
    return state.replace(params=traverse_util.unflatten_dict(flat, sep='/'))

  def report(self, ctx, test):
    """{'init_from_notes': [...]} in summary.json when loading 'hf:DIR' left something to
    say (a head at its fresh init, tensors not used); taken once, by this run's report."""
    notes, self.notes = self.notes, []
    return {'init_from_notes': notes} if notes else {}

  @staticmethod
  def _restore(init_from: str, wanted: dict, model_state):
    """(the `wanted` params, the model state) of the run's result checkpoint."""
    source = checkpoint_dir(init_from) if os.path.isdir(checkpoint_dir(init_from)) else init_from
    if not os.path.isdir(source):
      raise CheckpointError(f'init_from={init_from!r} is not a directory of checkpoints',
                            key='init_from')
    abstract = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    checkpointer = Checkpointer(source)
    # A finished run's result, which may be an earlier (best) step than its newest checkpoint.
    card = _card_of(init_from)
    step = card['step'] if card and card.get('step') in checkpointer.steps else None
    parts = checkpointer.restore_parts(
        {'params': abstract(traverse_util.unflatten_dict(wanted, sep='/')),
         'model_state': abstract(model_state)}, step)
    return parts['params'], parts['model_state']


def _card_of(init_from: str) -> dict | None:
  """model.json of the run `init_from` names (its workdir or its checkpoints/), else None."""
  if not init_from or init_from.startswith(HF):
    return None
  path = os.path.normpath(init_from)
  if os.path.normpath(checkpoint_dir(os.path.dirname(path))) == path:  # Its checkpoints/.
    path = os.path.dirname(path)
  return read_card(path) if os.path.isfile(os.path.join(path, MODEL_CARD)) else None
