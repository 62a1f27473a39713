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
from jaxmodels.pretrained.name_map import checkpoint_shape, map_tensors, to_param
from jaxmodels.pretrained.resize import resize_grid

_STACKED = re.compile(r'(^|/)layers/')


def _fit(path: str, mapped, shape: tuple, directory: str, model_type: str) -> np.ndarray:
  """The mapped tensor in the param's layout, once its shape is the one the param needs in
  the checkpoint (or, for a position table, a grid that resizes to it)."""
  found, expected = tuple(mapped.array.shape), checkpoint_shape(mapped.rule, shape)
  if found == expected:
    return to_param(mapped, shape)
  if mapped.rule.resize_grid and len(found) == 3 and found[::2] == expected[::2]:
    try:
      return resize_grid(np.asarray(mapped.array), shape[1])
    except ValueError:
      pass
  # Same sizes in another order: a transposed tensor, whose element count would still fit.
  hint = (f'transposed, not the layout of a Hugging Face {model_type} checkpoint'
          if sorted(found) == sorted(expected) else
          'the model options (model.*) must match its config.json')
  param = f'param {path}' + ('' if expected == shape else f' {shape}')
  raise CheckpointError(f'{directory}: tensor {mapped.source} has shape {found}, expected '
                        f'{expected} for {param}: {hint}', key='init_from')


def load_params(directory: str, shapes: Mapping[str, tuple]) -> tuple[dict, list[str]]:
  """({param path: float32 array} for the params named in `shapes`, notes).

  shapes: {'bert/encoder/layer0/attention/query/kernel': (E, H, D), ...}, the params to
  fill (leave out those that keep their fresh init). Layers stacked by `scan_layers`
  ('.../layers/...', a leading layer axis) are assembled from the per-layer tensors. A
  missing tensor, or one whose shape is not the param's in the checkpoint's layout
  (`name_map.checkpoint_shape`; a transposed tensor of the right size too), is a
  CheckpointError naming both; a head the checkpoint lacks (another task's, e.g. no
  classifier in a BertModel) is left out of the result and noted. notes: one-line strings
  for the caller to say (load_pretrained and init_from print them).
  """
  config = files.read_config(directory)
  architecture = architecture_of(config, directory)
  mapped, unused = map_tensors(files.read_tensors(directory), architecture.rules,
                               architecture.ignore)
  out, notes, model_type = {}, [], config['model_type']
  for path, shape in shapes.items():
    shape = tuple(shape)
    if _STACKED.search(path):
      layers = [_STACKED.sub(rf'\1layer{i}/', path) for i in range(shape[0])]
      if all(layer in mapped for layer in layers):
        out[path] = np.stack([_fit(layer, mapped[layer], shape[1:], directory, model_type)
                              for layer in layers])
        continue
      path_in_checkpoint = next(layer for layer in layers if layer not in mapped)
    else:
      path_in_checkpoint = path
    if path in mapped:
      out[path] = _fit(path, mapped[path], shape, directory, model_type)
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


def load_pretrained(directory: str, example=None, *, with_notes: bool = False, **overrides):
  """(module, {'params': ...}): the model of config.json with the checkpoint's weights.

  example: an input batch to initialise with ((1, T) tokens, or (1, H, W, C) images; by
  default one token, or a 224x224 image of config.json's size). Heads the checkpoint
  lacks keep their fresh init. The loader's notes (those params, unused tensors) are
  printed on process 0, one line each; with_notes=True returns them too:
  (module, variables, notes).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jaxmodels.models import MODELS
  config = files.read_config(directory)
  name, arguments = pretrained_model(directory, **overrides)
  if name == 'vit':  # Its channel count tells HF's channels-first pixel_values apart.
    arguments.setdefault('num_channels', config.get('num_channels', 3))
  module = MODELS[name](**arguments)
  if example is None:
    size = config.get('image_size', 224)
    example = (jnp.zeros((1, size, size, config.get('num_channels', 3))) if name == 'vit'
               else jnp.zeros((1, 1), jnp.int32))
  fresh = nn.meta.unbox(module.init(jax.random.PRNGKey(0), example))['params']
  flat = {jax.tree_util.keystr(p, simple=True, separator='/'): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(fresh)[0]}
  loaded, notes = load_params(directory, {p: leaf.shape for p, leaf in flat.items()})
  if jax.process_index() == 0:  # Every process loads; one says so.
    for note in notes:
      print(f'{directory}: {note}', flush=True)
  params = jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(loaded.get(jax.tree_util.keystr(p, simple=True, separator='/'),
                                             leaf)), fresh)
  return (module, {'params': params}, notes) if with_notes else (module, {'params': params})
