"""Vision Transformer: patches -> linear embedding + [CLS] + learned positions ->
Transformer encoder -> the [CLS] output -> Dense."""
import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.models.transformer import TransformerOptions, logical


class ViT(TransformerOptions):
  """images (B, H, W, C), H and W divisible by patch_size -> logits (B, num_classes)."""
  num_classes: int = 10
  patch_size: int = 4

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                name='patch_embed')(images.astype(self.dtype))
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
