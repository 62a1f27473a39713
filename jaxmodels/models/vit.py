"""Vision Transformer: patches -> linear embedding + [CLS] + learned positions ->
Transformer encoder -> the [CLS] output -> Dense."""
import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.models.transformer import Encoder, logical


class ViT(nn.Module):
  """images (B, H, W, C), H and W divisible by patch_size -> logits (B, num_classes)."""
  num_classes: int = 10
  patch_size: int = 4
  num_layers: int = 6
  num_heads: int = 4
  embed_dim: int = 192
  mlp_dim: int = 384
  dropout: float = 0.1
  scan_layers: bool = False
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

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
    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout, causal=False,
                use_rotary=False, scan=self.scan_layers, remat=self.remat, dtype=self.dtype,
                name='encoder')(x, train=train)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x[:, 0]).astype(jnp.float32)
