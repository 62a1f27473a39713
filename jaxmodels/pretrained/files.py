"""Hugging Face model directories, read without torch: `config.json`, and the weights as
numpy arrays from `model.safetensors` or the shards that `model.safetensors.index.json`
lists (safetensors' numpy API)."""
import json
import os

import numpy as np

from jaxmodels.errors import CheckpointError

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'


def _error(message: str) -> CheckpointError:
  return CheckpointError(message, key='init_from')


def read_config(directory: str) -> dict:
  """config.json of a model directory; CheckpointError (one line) if it is not one."""
  if not os.path.isdir(directory):
    raise _error(f'{directory!r} is not a directory: pass a Hugging Face model directory '
                 f'({CONFIG} + {WEIGHTS})')
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    raise _error(f'{directory} has no {CONFIG}: pass a Hugging Face model directory')
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise _error(f'cannot read {path}: {type(e).__name__}: {str(e)[:200]}') from None
  if not isinstance(config, dict):
    raise _error(f'{path} does not hold a JSON object')
  return config


def weight_files(directory: str) -> list[str]:
  """The safetensors files holding the weights: one file, or the index's shards."""
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
  if os.path.isfile(single):
    return [single]
  if os.path.isfile(index):
    try:
      with open(index, encoding='utf-8') as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
      raise _error(f'cannot read the shard index {index}: {type(e).__name__}') from None
    missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
    if missing:
      raise _error(f'{directory} lacks the shard {missing[0]} that {INDEX} lists')
    return [os.path.join(directory, s) for s in shards]
  raise _error(f'{directory} has no {WEIGHTS} (nor {INDEX}); pytorch_model.bin is not read: '
               'convert it to safetensors')


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the directory's safetensors files, by name, as numpy arrays."""
  from safetensors.numpy import load_file  # Imported on first use.
  tensors = {}
  for path in weight_files(directory):
    try:
      tensors.update(load_file(path))
    except Exception as e:  # Truncated or not a safetensors file at all.
      raise _error(f'cannot read {path}: {type(e).__name__}: {str(e)[:200]}') from None
  return tensors
