"""Saves or restores a sharded TrainState on N simulated devices, for test_checkpoint.py.

  python checkpoint_worker.py save|restore NUM_DEVICES CHECKPOINT_DIR PARAMS.npz
"""
import os
import sys

mode, num_devices, directory, npz = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxmodels as jm  # noqa: E402
from jaxmodels import parallel  # noqa: E402
from jaxmodels.checkpoint import Checkpointer, restore_or_init  # noqa: E402
from jaxmodels.models import MLP  # noqa: E402

model = jm.linen_model(MLP(hidden=(64,)))
tx = optax.adam(1e-3)
init = lambda r: jm.create_train_state(model, tx, r, np.zeros((1, 16), np.float32))
mesh = parallel.make_mesh({'fsdp': num_devices})
shardings = parallel.sharding_rules(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh,
                                    fsdp_min_size=256)
flat = lambda tree: {parallel.leaf_path(p): np.asarray(v)
                     for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

if mode == 'save':
  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(1))
  # Make every leaf distinctive, Adam moments included.
  distinct = lambda x: x + (0.5 if np.issubdtype(x.dtype, np.floating) else 3)
  state = state.replace(step=state.step + 7, opt_state=jax.tree.map(distinct, state.opt_state))
  checkpointer = Checkpointer(directory, save_every_steps=1)
  assert checkpointer.save(7, state, force=True)
  checkpointer.wait()
  np.savez(npz, **flat(state.params), **{f'opt/{k}': v for k, v in flat(state.opt_state).items()})
else:
  state, meta = restore_or_init(Checkpointer(directory), init, jax.random.PRNGKey(0), shardings)
  assert meta is not None and int(state.step) == 7, meta
  kernel = state.params['Dense_0']['kernel']
  # FSDP splits the largest dimension: the (16, 64) kernel becomes (16, 64 / N) per device.
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 64 // num_devices)}
  saved = np.load(npz)
  for name, value in {**flat(state.params),
                      **{f'opt/{k}': v for k, v in flat(state.opt_state).items()}}.items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
print('ok', mode, num_devices)
