"""Vision Transformer: patches -> linear embedding + [CLS] + learned positions ->
Transformer encoder -> the [CLS] output -> Dense."""
import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.errors import InputError
from jaxmodels.models.transformer import TransformerOptions, logical


class ViT(TransformerOptions):
  """images (B, H, W, C), H and W divisible by patch_size -> logits (B, num_classes).

  num_channels: C, when known (a Hugging Face checkpoint's, `jaxmodels.pretrained`): then
  channels-first images (B, C, H, W), as transformers' image processors give pixel_values,
  are taken too (an image whose last axis is C is channels-last), and any other layout is
  an InputError. None: channels-last only, of whatever C the params were made for.
  """
  num_classes: int = 10
  patch_size: int = 4
  num_channels: int | None = None

  def _channels_last(self, images):
    """images (B, H, W, C) as they are; (B, C, H, W) with C = num_channels transposed."""
    channels = self.num_channels
    if channels is None or (images.ndim == 4 and images.shape[-1] == channels):
      return images
    if images.ndim == 4 and images.shape[1] == channels:
      return jnp.transpose(images, (0, 2, 3, 1))
    raise InputError(f'ViT takes images (B, H, W, {channels}) or (B, {channels}, H, W) '
                     f"(channels first, as Hugging Face's processors give), got "
                     f'{tuple(images.shape)}')

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                name='patch_embed')(self._channels_last(images).astype(self.dtype))
    x = x.reshape(x.shape[0], -1, self.embed_dim)  # (B, num_patches, E)
    cls = self.param('cls', logical(nn.initializers.zeros, None, None, 'embed'),
                     (1, 1, self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.embed_dim)).astype(x.dtype),
                         x], axis=1)
    positions = self.param('position_embedding',
                           logical(nn.initializers.normal(0.02), None, 'length', 'embed'),
                           (1, x.shape[1], self.embed_dim))
    x = nn.Dropout(self.dropout, deterministic=not train)(x + positions.astype(x.dtype))
    x = self.encoder(causal=False, use_rotary=False)(x, train=train)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x[:, 0]).astype(jnp.float32)
