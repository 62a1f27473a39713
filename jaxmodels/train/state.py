"""TrainState: the whole training state as one pytree, nothing hidden."""
import functools
import zlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxmodels.train import cpu_path
from jaxmodels.train.model import as_model


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar. rng: base PRNG key (uint32[2]); step k uses fold_in(rng, k),
  so a resumed run draws the same randomness without storing a key per step."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       example_inputs) -> TrainState:
  """Initialises params, model state and optimiser state.

  model: a `Model`, Linen module or NNX module. example_inputs: one batch of
  inputs (only shapes and dtypes matter). Pure, so `jax.jit(...)` or
  `jax.eval_shape(...)` of it works; called directly it runs as one compiled program
  (rather than op by op, which compiles dozens of tiny programs). The params are drawn
  with the threefry `cpu_path.partitionable_threefry_at_init` picks.
  """
  return _create_train_state(as_model(model), tx, rng, example_inputs,
                             cpu_path.partitionable_threefry_at_init())


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _create_train_state(model, tx, rng, example_inputs, partitionable_threefry) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  with jax.threefry_partitionable(partitionable_threefry):
    variables = dict(model.init(init_rng, example_inputs))
  params = variables.pop('params')
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=state_rng,
      model_state=variables,
  )


def step_rngs(state: TrainState, *names: str) -> dict[str, jax.Array]:
  """Per-step keys, one per name, derived from (state.rng, state.step, name)."""
  key = jax.random.fold_in(state.rng, state.step)
  # crc32, not hash(): Python salts hash() per process.
  return {name: jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF) for name in names}
