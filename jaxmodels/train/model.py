"""A model is a pair of pure functions; adapters from Linen, NNX and plain functions.

    init(rng, inputs) -> variables          # {'params': ..., **model_state}
    apply(variables, inputs, *, train, rngs) -> (outputs, model_state)

`apply` also returns the model state (batch-norm statistics and the like; `{}`
for stateless models), so the train step threads it through without knowing
which library wrote the model.
"""
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from flax import nnx


class Model(NamedTuple):
  init: Callable[..., Any]
  apply: Callable[..., tuple[Any, Any]]


def linen_model(module: nn.Module) -> Model:
  """Wraps a Linen module whose `__call__` takes `train: bool`."""

  def init(rng, inputs):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = module.init({'params': params_rng, 'dropout': dropout_rng}, inputs, train=False)
    # Plain arrays in the state; the logical axis names stay readable from the module
    # (see parallel.logical_rules).
    return dict(nn.meta.unbox(variables))

  def apply(variables, inputs, *, train: bool, rngs=None):
    state_collections = [name for name in variables if name != 'params']
    if train and state_collections:
      outputs, new_state = module.apply(
          variables, inputs, train=True, rngs=rngs, mutable=state_collections)
      return outputs, dict(new_state)
    outputs = module.apply(variables, inputs, train=train, rngs=rngs)
    return outputs, {name: variables[name] for name in state_collections}

  return Model(init, apply)


def nnx_model(model: nnx.Module) -> Model:
  """Wraps an (already initialised) NNX module through `nnx.split` / `nnx.merge`.

  Its non-parameter state (batch stats, rng counters) travels as
  `model_state['nnx']`. The step's dropout key reseeds the module's `dropout`
  stream, so randomness comes from `TrainState.rng` as for Linen.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def init(rng, inputs):
    del rng, inputs  # NNX modules are initialised eagerly at construction.
    return {'params': params, 'nnx': rest}

  def apply(variables, inputs, *, train: bool, rngs=None):
    module = nnx.merge(graphdef, variables['params'], variables['nnx'])
    # The attributes that NNX train and inference modes set: dropout and batch-norm.
    module.set_attributes(deterministic=not train, use_running_average=not train,
                          raise_if_not_found=False)
    if train and rngs and 'dropout' in rngs:
      nnx.reseed(module, dropout=rngs['dropout'])
    outputs = module(inputs)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return outputs, {'nnx': new_rest}

  return Model(init, apply)


def function_model(init_fn: Callable, apply_fn: Callable) -> Model:
  """Wraps plain functions `init_fn(rng, inputs) -> params`, `apply_fn(params, inputs) -> outputs`."""

  def init(rng, inputs):
    return {'params': init_fn(rng, inputs)}

  def apply(variables, inputs, *, train: bool, rngs=None):
    del train, rngs
    return apply_fn(variables['params'], inputs), {}

  return Model(init, apply)


def as_model(model) -> Model:
  """Accepts a `Model`, a Linen module or an NNX module."""
  if isinstance(model, Model):
    return model
  if isinstance(model, nn.Module):
    return linen_model(model)
  if isinstance(model, nnx.Module):
    return nnx_model(model)
  raise TypeError(
      f'cannot use {type(model).__name__} as a model: pass a flax.linen.Module, an nnx.Module, '
      'or function_model(init_fn, apply_fn)')
