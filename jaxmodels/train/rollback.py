"""Roll back on NaN: restore the last good checkpoint, lower the learning rate, go on."""
from collections.abc import Callable

import jax
from absl import logging

from jaxmodels.errors import NonFiniteError
from jaxmodels.train.optim import lr_multiplier, set_lr_multiplier


def fit_with_rollback(fit_fn: Callable, state, checkpointer, *, lr_factor: float = 0.5,
                      max_rollbacks: int = 3, announce: Callable[[str], None] = print):
  """Runs `fit_fn(state) -> (state, history)`; when it raises NonFiniteError, restores the
  newest checkpoint of `checkpointer`, multiplies the optimiser state's 'lr_multiplier'
  (`with_lr_multiplier`) by `lr_factor` and runs it again, at most `max_rollbacks` times.
  """
  rollbacks = 0
  while True:
    try:
      return fit_fn(state)
    except NonFiniteError as error:
      if rollbacks >= max_rollbacks:
        raise
      checkpointer.wait()
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              state)
      restored = checkpointer.restore(abstract) if checkpointer.steps else None
      if restored is None:
        raise NonFiniteError(f'{error} (no checkpoint to roll back to yet)', error.step) from None
      state = restored[0]
      multiplier = lr_multiplier(state.opt_state) * lr_factor
      state = state.replace(opt_state=set_lr_multiplier(state.opt_state, multiplier))
      rollbacks += 1
      message = (f'{error}; rolled back to step {int(state.step)} with the learning rate '
                 f'x{multiplier:g} (rollback {rollbacks} of {max_rollbacks})')
      logging.warning(message)
      announce(f'warning: {message}')
