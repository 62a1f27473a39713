"""Scale-out on JAX's own runtime: mesh, sharding rules, sharded state, batch placement,
jit/shard_map steps and multi-process initialisation."""
from jaxmodels.parallel.mesh import (BATCH_AXES, MESH_AXES, batch_axes, batch_sharding, make_mesh,
                                     mesh_shape, place_global, place_state, replicated,
                                     shard_batch, single_device_mesh)
from jaxmodels.parallel.multihost import (assert_same_config, host_copy, initialize_distributed,
                                          is_main_process)
from jaxmodels.parallel.rules import (LOGICAL_AXIS_RULES, create_sharded_state, fsdp_spec,
                                      leaf_path, logical_rules, sharding_rules)
from jaxmodels.parallel.steps import jit_train_step, per_device_step

__all__ = ['assert_same_config', 'BATCH_AXES', 'batch_axes', 'batch_sharding',
           'create_sharded_state', 'fsdp_spec', 'host_copy', 'initialize_distributed',
           'is_main_process', 'jit_train_step', 'leaf_path', 'LOGICAL_AXIS_RULES', 'logical_rules',
           'make_mesh', 'MESH_AXES', 'mesh_shape', 'per_device_step', 'place_global',
           'place_state', 'replicated', 'shard_batch', 'sharding_rules', 'single_device_mesh']
