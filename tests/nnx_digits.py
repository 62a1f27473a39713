"""An NNX CNN written as Flax's docs write it, its Linen twin, and one training recipe on
scikit-learn's digits, for test_nnx.py. Run as a script it trains the NNX CNN with
checkpoints, resuming from any it finds, and can SIGKILL itself mid-run:

  python nnx_digits.py WORKDIR NUM_STEPS [KILL_AT_STEP]

At the end it prints 'resumed from step S' or 'fresh start' and writes every leaf of the
final TrainState to WORKDIR/final.npz.
"""
import functools
import os
import signal
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
from flax import nnx

import jaxmodels as jm

BATCH_SIZE = 64
SAVE_EVERY = 50


class NnxCNN(nnx.Module):
  """conv16 -> BN -> ReLU -> max-pool -> conv32 -> BN -> ReLU -> max-pool -> dropout ->
  dense64 -> dropout -> 10, on (B, 8, 8, 1) images."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(16, rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(0.25, rngs=rngs)
    self.linear1 = nnx.Linear(2 * 2 * 32, 64, rngs=rngs)
    self.dropout2 = nnx.Dropout(0.25, rngs=rngs)
    self.linear2 = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), window_shape=(2, 2), strides=(2, 2))
    x = self.dropout1(x.reshape(x.shape[0], -1))
    x = self.dropout2(nnx.relu(self.linear1(x)))
    return self.linear2(x)


class LinenCNN(nn.Module):
  """NnxCNN in Linen, with the same layer names (so the same variable tree)."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for i, width in ((1, 16), (2, 32)):
      x = nn.Conv(width, (3, 3), name=f'conv{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, name=f'bn{i}')(x)
      x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
    x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
    x = nn.Dropout(0.25, deterministic=not train)(nn.relu(nn.Dense(64, name='linear1')(x)))
    return nn.Dense(10, name='linear2')(x)


@functools.cache
def digits():
  """((train images, labels), (test images, labels)): float32 (N, 8, 8, 1) in [0, 1]."""
  data = jm.load_dataset('digits')
  scale = lambda images: images.astype(np.float32) / 255
  return ((scale(data.train_images), data.train_labels),
          (scale(data.test_images), data.test_labels))


def recipe(model):
  """(init(rng) -> TrainState, train_step, eval_step) for `model`: Adam, cross-entropy."""
  tx = optax.adam(3e-3)
  model = jm.as_model(model)
  init = lambda rng: jm.create_train_state(model, tx, rng, np.zeros((1, 8, 8, 1), np.float32))
  train_step = jm.make_train_step(model.apply, jm.classification_loss(), tx)
  eval_step = jm.make_eval_step(model.apply, jm.classification_loss(),
                                jm.classification_metrics(10))
  return init, train_step, eval_step


class KillAt(jm.Callback):
  """SIGKILLs this process at `step`, once the checkpoints already begun are on disk: the
  steps since the last one are lost, and nothing is saved or cleaned up."""

  def __init__(self, step: int, checkpointer):
    self._step, self._checkpointer = step, checkpointer

  def on_steps_end(self, step, state):
    if step == self._step:
      self._checkpointer.wait()
      os.kill(os.getpid(), signal.SIGKILL)


def train_nnx(num_steps: int, callbacks=(), checkpointer=None):
  """The NNX CNN trained for `num_steps` from seed 1, resumed from `checkpointer`'s newest
  checkpoint if it has one. Returns (state, resumed_from: step or None)."""
  from jaxmodels.checkpoint import restore_or_init
  init, train_step, _ = recipe(NnxCNN(rngs=nnx.Rngs(0)))
  state, meta = restore_or_init(checkpointer, init, jax.random.PRNGKey(1))
  resumed_from = int(state.step) if meta else None
  state, _ = jm.fit(state, train_step, digits()[0], batch_size=BATCH_SIZE, num_steps=num_steps,
                    callbacks=callbacks, progress=False)
  return state, resumed_from


def flat_leaves(state) -> dict:
  """{'.params['conv1']['kernel']': array, ...}: every leaf of a TrainState, on the host."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def main(workdir: str, num_steps: int, kill_at: int | None = None):
  from jaxmodels.checkpoint import Checkpoint, Checkpointer
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), save_every_steps=SAVE_EVERY,
                              keep_last=10)
  callbacks = [Checkpoint(checkpointer)] + ([KillAt(kill_at, checkpointer)] if kill_at else [])
  state, resumed_from = train_nnx(num_steps, callbacks, checkpointer)
  print(f'resumed from step {resumed_from}' if resumed_from else 'fresh start', flush=True)
  np.savez(os.path.join(workdir, 'final.npz'), **flat_leaves(state))
  return state


if __name__ == '__main__':
  jm.enable_compilation_cache()  # The test session's cache: the programs it compiled run here.
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
