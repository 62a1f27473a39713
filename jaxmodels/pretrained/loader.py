"""Pretrained weights into jaxmodels: a Hugging Face directory -> param arrays for a model's
param paths, every shape checked; or the whole model at once.

    module, variables = load_pretrained('path/to/bert')   # the model config.json describes
    logits = module.apply(variables, tokens)
"""
import re
from collections.abc import Mapping

import numpy as np

from jaxmodels.errors import CheckpointError
from jaxmodels.pretrained import files
from jaxmodels.pretrained.architectures import architecture_of, model_arguments
from jaxmodels.pretrained.name_map import map_tensors
from jaxmodels.pretrained.resize import resize_grid

_STACKED = re.compile(r'(^|/)layers/')


def _fit(path: str, mapped, shape: tuple, directory: str) -> np.ndarray:
  """The mapped tensor in the param's shape, by its rule's reshape or grid resize."""
  array, rule = mapped.array, mapped.rule
  if array.shape == shape:
    return array
  if rule.reshape and array.size == int(np.prod(shape)):
    return array.reshape(shape)
  if rule.resize_grid and array.ndim == 3 and array.shape[2] == shape[2]:
    try:
      return resize_grid(array, shape[1])
    except ValueError:
      pass
  raise CheckpointError(f'{directory}: tensor {mapped.source} {tuple(mapped.array.shape)} does '
                        f'not fit param {path} {shape}: the model options (model.*) must '
                        'match its config.json', key='init_from')


def load_params(directory: str, shapes: Mapping[str, tuple]) -> tuple[dict, list[str]]:
  """({param path: float32 array} for the params named in `shapes`, notes).

  shapes: {'bert/encoder/layer0/attention/query/kernel': (E, H, D), ...}, the params to
  fill (leave out those that keep their fresh init). Layers stacked by `scan_layers`
  ('.../layers/...', a leading layer axis) are assembled from the per-layer tensors. A
  missing tensor or one that does not fit is a CheckpointError naming both; a head the
  checkpoint lacks (another task's, e.g. no classifier in a BertModel) is left out of the
  result and noted.
  """
  config = files.read_config(directory)
  architecture = architecture_of(config, directory)
  mapped, unused = map_tensors(files.read_tensors(directory), architecture.rules,
                               architecture.ignore)
  out, notes = {}, []
  for path, shape in shapes.items():
    shape = tuple(shape)
    if _STACKED.search(path):
      layers = [_STACKED.sub(rf'\1layer{i}/', path) for i in range(shape[0])]
      if all(layer in mapped for layer in layers):
        out[path] = np.stack([_fit(layer, mapped[layer], shape[1:], directory)
                              for layer in layers])
        continue
      path_in_checkpoint = next(layer for layer in layers if layer not in mapped)
    else:
      path_in_checkpoint = path
    if path in mapped:
      out[path] = _fit(path, mapped[path], shape, directory)
    elif re.search(architecture.optional, path):
      notes.append(path)
    else:
      raise CheckpointError(f'{directory} has no tensor for param {path_in_checkpoint} (a '
                            f'{config["model_type"]} checkpoint with missing weights, or '
                            'model options that do not match its config.json)',
                            key='init_from')
  if notes:
    notes = [f'not in the checkpoint, left at their fresh init: {", ".join(notes)}']
  if unused:
    notes.append(f'{len(unused)} tensors of the checkpoint were not used '
                 f'({", ".join(unused[:3])}{", ..." if len(unused) > 3 else ""})')
  return {k: np.asarray(v, np.float32) for k, v in out.items()}, notes


def pretrained_model(directory: str, **overrides) -> tuple[str, dict]:
  """(models.MODELS name, arguments) of the model the directory's config.json describes;
  `overrides` replace arguments (dropout, attention='explicit', num_classes, ...)."""
  name, arguments = model_arguments(files.read_config(directory), directory)
  return name, {**arguments, **overrides}


def load_pretrained(directory: str, example=None, **overrides):
  """(module, {'params': ...}): the model of config.json with the checkpoint's weights.

  example: an input batch to initialise with ((1, T) tokens, or (1, H, W, C) images; by
  default one token, or a 224x224 image of config.json's size). Heads the checkpoint
  lacks keep their fresh init.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jaxmodels.models import MODELS
  name, arguments = pretrained_model(directory, **overrides)
  module = MODELS[name](**arguments)
  if example is None:
    config = files.read_config(directory)
    size = config.get('image_size', 224)
    example = (jnp.zeros((1, size, size, config.get('num_channels', 3))) if name == 'vit'
               else jnp.zeros((1, 1), jnp.int32))
  fresh = nn.meta.unbox(module.init(jax.random.PRNGKey(0), example))['params']
  flat = {jax.tree_util.keystr(p, simple=True, separator='/'): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(fresh)[0]}
  loaded, _ = load_params(directory, {p: leaf.shape for p, leaf in flat.items()})
  params = jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(loaded.get(jax.tree_util.keystr(p, simple=True, separator='/'),
                                             leaf)), fresh)
  return module, {'params': params}
