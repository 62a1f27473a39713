"""ResNet for small images (the CIFAR variant: 3x3 stem, no max-pool), with batch-norm."""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""
  width: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda w, k, s, name: nn.Conv(w, (k, k), (s, s), use_bias=False, dtype=self.dtype,
                                         name=name)
    norm = lambda name, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                           dtype=self.dtype, name=name, **kw)
    h = nn.relu(norm('bn1')(conv(self.width, 3, self.stride, 'conv1')(x)))
    # Zero-initialised last scale: each block starts as the identity, which helps deep stacks.
    h = norm('bn2', scale_init=nn.initializers.zeros)(conv(self.width, 3, 1, 'conv2')(h))
    if x.shape[-1] != self.width or self.stride != 1:
      x = norm('bn_shortcut')(conv(self.width, 1, self.stride, 'shortcut')(x))
    return nn.relu(x + h)


class ResNet(nn.Module):
  """stem conv3x3 -> stages of BasicBlocks (stride 2 between stages) -> GAP -> Dense.

  stage_sizes (2, 2, 2, 2) with widths (64, 128, 256, 512) is ResNet-18.
  remat: recompute each block's activations in the backward pass.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # static_argnums counts self: `train` (argument 2) picks the code path, so it is static.
    block = nn.remat(BasicBlock, static_argnums=(2,)) if self.remat else BasicBlock
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=self.dtype, name='stem')(
        x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             name='stem_bn')(x))
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = block(width, stride, self.dtype, name=f'stage{i}_block{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
