"""The model a run trains, from its config: `model.*` options checked against the model's
fields, plus the arguments the task derives from its data."""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from absl import logging

from jaxmodels import models
from jaxmodels.errors import ConfigError


_fields = lambda cls: {f.name for f in dataclasses.fields(cls)} - {'parent', 'name', 'dtype'}
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_options(config) -> dict:
  """config.model's options for the model it names. Options of other models are ignored
  with a warning (one recipe may serve several models, e.g. lstm and bert); an option of
  no model is an error."""
  accepted = _fields(models.MODELS[config.model.name])
  options = {k: v for k, v in config.model.items() if k != 'name'}
  unknown = sorted(set(options) - set().union(*map(_fields, models.MODELS.values())))
  if unknown:
    raise ConfigError(f'model.{unknown[0]} is an option of no model; {config.model.name} '
                      f'takes {", ".join(sorted(accepted))}', key=f'model.{unknown[0]}')
  ignored = sorted(set(options) - accepted)
  if ignored:
    logging.warning('model %s ignores the options %s', config.model.name, ', '.join(ignored))
  return {k: v for k, v in options.items() if k in accepted}


def model_arguments(config, options: dict, data_arguments: dict) -> dict:
  """The constructor arguments of the model named by config.model.name: its `model_options`
  and the data's arguments (a task's `model_kwargs`), JSON-able (model.json records them)."""
  accepted = _fields(models.MODELS[config.model.name])
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in {**options, **data_arguments}.items() if k in accepted}


def build_module(name: str, arguments: dict, dtype=jnp.float32) -> nn.Module:
  """`models.MODELS[name]` built from JSON-able arguments (lists become tuples)."""
  arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in arguments.items()}
  return models.MODELS[name](**arguments, dtype=dtype)


def build_model(config, arguments: dict) -> nn.Module:
  """The model config.model.name names, with `arguments`, in precision.compute_dtype."""
  dtype = COMPUTE_DTYPES[config.precision.compute_dtype]
  return build_module(config.model.name, arguments, dtype)
