"""TrainState: the whole training state as one pytree, nothing hidden."""
import functools
import zlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

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
  (rather than op by op, which compiles dozens of tiny programs).
  """
  return _create_train_state(as_model(model), tx, rng, example_inputs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _create_train_state(model, tx, rng, example_inputs) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  # XLA:CPU compiles the partitionable threefry of small rank-3/4 draws (conv and attention
  # kernels) for seconds each; on CPU the classic one draws the initial params instead.
  # Elsewhere the partitionable one lets sharded params be drawn shard by shard.
  with jax.threefry_partitionable(jax.default_backend() != 'cpu'):
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
