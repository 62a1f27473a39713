"""Multi-layer perceptron classifier."""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten -> [Dense -> ReLU -> Dropout] * len(hidden) -> Dense(num_classes).

  Input: (B, ...) float; output: (B, num_classes) float32 logits.
  """
  hidden: Sequence[int] = (512, 256)
  num_classes: int = 10
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
