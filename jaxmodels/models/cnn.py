"""Convolutional image classifiers: the seed CNNs and a VGG-style ConvNet.

All take (B, H, W, C) float images and return (B, num_classes) float32 logits.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.models.layers import max_pool


class SmallCNN(nn.Module):
  """The worked-example CNN: conv32(3x3) -> max-pool 2 -> dense128 -> num_classes."""
  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # No dropout or batch-norm; kept for the shared signature.
    x = nn.Conv(32, (3, 3), padding='VALID', dtype=self.dtype)(x.astype(self.dtype))
    x = nn.relu(max_pool(x, 2))  # = max_pool(relu(x)), with the ReLU on a quarter of the values.
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class ThreeConvCNN(nn.Module):
  """conv32 -> pool -> conv64 -> pool -> conv64 -> dense64 -> num_classes (3x3, VALID).

  The Keras CNN tutorial network. `batch_norm` and `dropout` turn it into the
  regularised CIFAR-10 variant (`Cifar10CNN`).
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 64)
  dense: int = 64
  batch_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), padding='VALID', use_bias=not self.batch_norm, dtype=self.dtype)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      if i < len(self.widths) - 1:
        x = max_pool(x, 2)  # Before the ReLU: the same values, a quarter of the work.
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class Cifar10CNN(ThreeConvCNN):
  """The three-conv CNN as used on 32x32x3 CIFAR-10 images, with batch-norm and dropout on."""
  batch_norm: bool = True
  dropout: float = 0.3


class ConvStage(nn.Module):
  """`convs` x (conv3x3 -> BN -> ReLU), then max-pool 2."""
  width: int
  convs: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.convs):
      x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      if i == self.convs - 1:
        x = max_pool(x, 2)  # Before the ReLU: the same values, a quarter of the work.
      x = nn.relu(x)
    return x


class ConvNet(nn.Module):
  """VGG-style: one `ConvStage` per width, then global average pool -> dropout -> Dense.

  remat: recompute each stage's activations in the backward pass instead of
  keeping them (less memory, about one more forward pass of compute).
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  convs_per_stage: int = 2
  dropout: float = 0.2
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    # static_argnums counts self: `train` (argument 2) picks the code path, so it must be static.
    stage = nn.remat(ConvStage, static_argnums=(2,)) if self.remat else ConvStage
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = stage(width, self.convs_per_stage, self.dtype, name=f'stage{i}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
