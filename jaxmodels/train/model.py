"""A model is a pair of pure functions; adapters from Linen, NNX and plain functions.

    init(rng, inputs) -> variables          # {'params': ..., **model_state}
    apply(variables, inputs, *, train, rngs) -> (outputs, model_state)

`apply` also returns the model state (batch-norm statistics and the like; `{}`
for stateless models), so the train step threads it through without knowing
which library wrote the model.
"""
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
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

  Variables travel as plain dicts of arrays laid out as Linen's: 'params' (nnx.Param) and,
  where the module has them, model state 'batch_stats' (nnx.BatchStat) and 'nnx' (other
  variables). Rng streams (nnx.RngKey / RngCount) stay out of the state: their typed keys
  cannot become numpy arrays (placement, checkpoints), and they would carry nothing, since
  each train step reseeds every stream from its own keys (`TrainState.rng` folded with the
  step), as Linen's dropout is seeded; a resumed run so redraws the same masks. Called
  without keys, the streams restart from their state at construction.
  """
  graphdef, params, batch_stats, rng_state, other = nnx.split(
      model, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
  rng_state = nnx.to_pure_dict(rng_state)

  def model_state(batch_stats, other):
    state = {'batch_stats': nnx.to_pure_dict(batch_stats), 'nnx': nnx.to_pure_dict(other)}
    return {name: value for name, value in state.items() if value}

  def init(rng, inputs):
    del rng, inputs  # NNX modules are initialised eagerly at construction.
    return {'params': nnx.to_pure_dict(params), **model_state(batch_stats, other)}

  def apply(variables, inputs, *, train: bool, rngs=None):
    module = nnx.merge(graphdef, variables['params'], variables.get('batch_stats', {}),
                       rng_state, variables.get('nnx', {}))
    # The attributes that NNX train and inference modes set: dropout and batch-norm.
    module.set_attributes(deterministic=not train, use_running_average=not train,
                          raise_if_not_found=False)
    if train and rngs:
      _reseed_streams(module, rngs)
    outputs = module(inputs)
    _, _, new_batch_stats, _, new_other = nnx.split(
        module, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
    return outputs, model_state(new_batch_stats, new_other)

  return Model(init, apply)


def _reseed_streams(module: nnx.Module, rngs) -> None:
  """Gives every rng stream of `module` a key of its own from `rngs`: the key named by the
  stream's tag, else the 'dropout' key (`nnx.Rngs(0)` makes 'default' streams), folded
  with the stream's path so that two dropout layers never share a mask."""
  for path, stream in nnx.iter_graph(module):
    if not isinstance(stream, nnx.RngStream):
      continue
    key = rngs.get(stream.key.tag, rngs.get('dropout'))
    if key is None:
      continue
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # A raw uint32[2] key such as PRNGKey's.
    key = jax.random.fold_in(key, zlib.crc32('/'.join(map(str, path)).encode()) & 0x7FFFFFFF)
    shape = stream.key.get_value().shape
    stream.key.set_value(jax.random.split(key, shape) if shape else key)
    stream.count.set_value(jnp.zeros(shape, jnp.uint32))


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
