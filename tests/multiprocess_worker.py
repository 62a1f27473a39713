"""One process of a localhost JAX cluster (gloo CPU collectives), for test_multiprocess.py.

  python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process owns 4 / NUM_PROCESSES CPU devices and its own rows of the data;
NUM_PROCESSES=1 is the single-process reference on the same 4 devices.
"""
import os
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={4 // num_processes}'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import jaxmodels as jm  # noqa: E402
from jaxmodels import parallel  # noqa: E402
from jaxmodels.models import ThreeConvCNN  # noqa: E402

parallel.initialize_distributed(f'localhost:{port}' if num_processes > 1 else None,
                                num_processes, process_id)
assert jax.process_count() == num_processes and jax.device_count() == 4

rng = np.random.default_rng(0)
images = rng.normal(size=(128, 8, 8, 1)).astype(np.float32)
labels = rng.integers(0, 10, 128).astype(np.int32)
mine = slice(process_id * 128 // num_processes, (process_id + 1) * 128 // num_processes)

model = jm.linen_model(ThreeConvCNN(widths=(8, 16), dense=32))
tx = optax.sgd(0.05, momentum=0.9)
init = lambda r: jm.create_train_state(model, tx, r, images[:1])
train_step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                                jm.classification_metrics(10))
mesh = parallel.make_mesh({'data': -1})

# 1. The building blocks: sharded init, jitted step, each process feeding its half of a batch.
state, shardings = parallel.create_sharded_state(init, jax.random.PRNGKey(0), mesh)
step = parallel.jit_train_step(train_step, shardings, mesh)
batch_rows = slice(process_id * 32 // num_processes, (process_id + 1) * 32 // num_processes)
for _ in range(3):
  state, _ = step(state, parallel.shard_batch(
      {'inputs': images[batch_rows], 'labels': labels[batch_rows]}, mesh))
step_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)

# 2. fit, each process placing only its own rows of the dataset.
state, _ = parallel.create_sharded_state(init, jax.random.PRNGKey(0), mesh)
state, history = jm.fit(state, train_step, (images[mine], labels[mine]), batch_size=32,
                        num_steps=6, log_every_steps=3, mesh=mesh, progress=False)
fit_params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)

# 3. FSDP across both processes with orbax checkpoints in a directory they share.
from jaxmodels.checkpoint import Checkpoint, Checkpointer, restore_or_init  # noqa: E402
fsdp_mesh = parallel.make_mesh({'data': 2, 'fsdp': 2})
state, shardings = parallel.create_sharded_state(init, jax.random.PRNGKey(0), fsdp_mesh,
                                                 fsdp_min_size=64)
directory = os.path.join(os.path.dirname(out), f'checkpoints-{num_processes}')
state, _ = jm.fit(state, train_step, (images[mine], labels[mine]), batch_size=32, num_steps=6,
                  log_every_steps=3, mesh=fsdp_mesh, progress=False,
                  callbacks=[Checkpoint(Checkpointer(directory, save_every_steps=3))])
restored, meta = restore_or_init(Checkpointer(directory), init, jax.random.PRNGKey(5), shardings)
assert meta is not None and int(restored.step) == 6 and Checkpointer(directory).steps == [3, 6]
gather = lambda tree: jax.tree.map(
    lambda x: multihost_utils.process_allgather(x, tiled=True), tree)
jax.tree.map(np.testing.assert_array_equal, gather(restored.params), gather(state.params))
ckpt_params = gather(restored.params)

flat = {f'step/{parallel.leaf_path(p)}': v
        for p, v in jax.tree_util.tree_flatten_with_path(step_params)[0]}
flat.update({f'fit/{parallel.leaf_path(p)}': v
             for p, v in jax.tree_util.tree_flatten_with_path(fit_params)[0]})
flat.update({f'ckpt/{parallel.leaf_path(p)}': v
             for p, v in jax.tree_util.tree_flatten_with_path(ckpt_params)[0]})
flat['fit_losses'] = np.array([r['loss'] for r in history.train])
np.savez(out, **flat)
