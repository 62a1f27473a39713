"""`init_from`: a run that starts from another run's params (fine-tuning)."""
import os

import jax

from jaxmodels.checkpoint import Checkpointer, checkpoint_dir
from jaxmodels.errors import CheckpointError
from jaxmodels.schema import Field, Schema
from jaxmodels.tasks.spec import Extension


class InitFrom(Extension):
  """Replaces the fresh params with those of `init_from`: a workdir, or its checkpoints/
  directory (the newest checkpoint). Shapes must match; a resumed run ignores it."""
  schema = Schema({
      'init_from': Field('', 'A workdir (or its checkpoints/) whose params start this run '
                         '(fine-tuning).', resumable=True),
  })

  def initialize(self, config, module, state):
    if not config.init_from:
      return state
    source = config.init_from
    source = checkpoint_dir(source) if os.path.isdir(checkpoint_dir(source)) else source
    if not os.path.isdir(source):
      raise CheckpointError(f'init_from={config.init_from!r} is not a directory of checkpoints',
                            key='init_from')
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state.params)
    return state.replace(params=Checkpointer(source).restore_params(abstract))
