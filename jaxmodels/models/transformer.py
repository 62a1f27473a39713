"""Transformer building blocks: multi-head attention through `jax.nn.dot_product_attention`
(fused kernels where the backend has them), rotary or learned positions, pre-LayerNorm
(GPT, ViT) or post-LayerNorm (BERT) residual blocks, and a layer stack with optional
`nn.scan` and rematerialisation. The numerics the published models need are options:
the LayerNorm epsilon, exact or tanh GELU, and biases on the attention projections.

Params and activations carry logical axis names -- 'batch', 'length', 'embed',
'heads', 'kv', 'mlp', 'vocab', 'layers' -- so sharding rules (`parallel.LOGICAL_AXIS_RULES`:
FSDP on 'embed', tensor parallelism on 'heads' / 'mlp') apply without touching the model. Shapes:
B batch, T query length, S key length, E embed, H heads, D head dim.
"""
import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models.layers import Dropout

Dtype = jnp.dtype

# The MLP's nonlinearity: 'gelu_tanh' is GPT-2's (and flax's default) approximation,
# 'gelu_erf' the exact GELU of BERT and ViT.
ACTIVATIONS = {
    'gelu_tanh': functools.partial(nn.gelu, approximate=True),
    'gelu_erf': functools.partial(nn.gelu, approximate=False),
    'relu': nn.relu,
}


def logical(init: Callable, *names):
  """An initializer whose param carries logical axis names."""
  return nn.with_logical_partitioning(init, names)


@functools.lru_cache(maxsize=16)
def rotary_table(length: int, head_dim: int, base: float = 10_000.0):
  """(sin, cos), each (length, head_dim / 2) float32: the rotary angles of positions
  0..length-1, computed once in numpy (in float64, then rounded) so that they enter the
  program as constants. Computed in the program, XLA:CPU fused sin and cos into each of
  their consumers and evaluated them again per element: 6 % of lm.py's train step."""
  half = head_dim // 2
  angles = np.arange(length)[:, None] * base ** (-np.arange(half) / half)
  tables = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
  for table in tables:
    table.flags.writeable = False  # Shared by every caller (cached).
  return tables


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0,
           max_length: int | None = None) -> jax.Array:
  """Rotary position embedding (RoFormer). x (B, T, H, D) with D even; positions (B, T) int
  below max_length (default T), read from `rotary_table`; positions past it are clipped."""
  sin, cos = rotary_table(max(max_length or 0, x.shape[1]), x.shape[-1], base)
  sin, cos = (jnp.take(t, positions, axis=0, mode='clip')[..., None, :] for t in (sin, cos))
  return _rotate(x.astype(jnp.float32), sin, cos).astype(x.dtype)


def _rotation(x, sin, cos):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


# The gradient of a rotation is the inverse rotation, one pass like the forward; autodiff's
# transpose of split and concatenate took two passes over (B, T, H, D) per query and key.
_rotate = jax.custom_vjp(_rotation)
_rotate.defvjp(lambda x, sin, cos: (_rotation(x, sin, cos), (sin, cos)),
               lambda residuals, g: (_rotation(g, -residuals[0], residuals[1]),
                                     *map(jnp.zeros_like, residuals)))


# `jax.nn.dot_product_attention` without a mask, as named calls: the CPU rewrite
# (`fast_path.rewrite_for_cpu`) finds them by name and computes them as `layers.attention`.
@jax.jit
def dot_product_attention(q, k, v):
  return jax.nn.dot_product_attention(q, k, v)


@jax.jit
def causal_dot_product_attention(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True)


class Projection(nn.Module):
  """A dense layer whose kernel keeps its head axes (and their logical names) instead of
  being a flattened matrix: the trailing `num_in` axes of x contract with the kernel's
  leading `num_in` axes, e.g. (B, T, E) x (E, H, D) -> (B, T, H, D) for a query and
  (B, T, H, D) x (H, D, E) -> (B, T, E) for the output. One `lax.dot_general`, so
  interception-based tools (qwix's LoRA and quantisation) see a weight they can adapt."""
  shape: tuple[int, ...]       # Kernel shape: fan-in axes first.
  names: tuple[str, ...]       # Logical axis names of the kernel.
  num_in: int = 1              # How many leading kernel axes are contracted (the fan-in).
  use_bias: bool = False       # A bias over the output axes.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_axes = tuple(range(self.num_in))
    out_axes = tuple(range(self.num_in, len(self.shape)))
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                            in_axis=in_axes, out_axis=out_axes)
    kernel = self.param('kernel', logical(init, *self.names), self.shape)
    # Cast as nn.Dense does, through promote_dtype: quantisers (qwix) hook it to pass int8
    # kernels through.
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    x_axes = tuple(range(x.ndim - self.num_in, x.ndim))
    y = jax.lax.dot_general(x, kernel, ((x_axes, in_axes), ((), ())))
    if self.use_bias:
      bias = self.param('bias', logical(nn.initializers.zeros, *self.names[self.num_in:]),
                        self.shape[self.num_in:])
      y = y + bias.astype(self.dtype)
    return y


def options_of(module: nn.Module, options: type) -> dict:
  """The values `module` holds for the fields of `options`, one of its options base classes:
  the arguments that pass those settings on to a submodule of that class."""
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(options)
          if f.name not in ('parent', 'name')}


class AttentionOptions(nn.Module):
  """The attention settings that MultiHeadAttention, Block and Encoder share.

  causal: each position sees only itself and the past. use_rotary: rotary positions
  in every layer. decode: keep a key/value cache of `max_length` positions.
  attention: 'fused' (`jax.nn.dot_product_attention`: fused kernels where the backend has
  them) or 'explicit' (the softmax written out, its weights (B, H, T, S) sown as
  'intermediates'/'attention_weights' for attention maps; the same outputs).
  attention_bias: biases on the query, key, value and output projections (GPT-2, BERT, ViT).
  """
  num_heads: int = 4
  causal: bool = False
  use_rotary: bool = True
  decode: bool = False
  max_length: int = 2048
  attention: str = 'fused'
  attention_bias: bool = False
  dtype: Dtype = jnp.float32


class MultiHeadAttention(AttentionOptions):
  """Self-attention. With `decode=True` it keeps a key/value cache of `max_length` positions
  in the 'cache' collection and attends from the new tokens to everything cached so far."""
  head_dim: int = 64

  @nn.compact
  def __call__(self, x, *, mask=None, positions=None):
    """x (B, T, E); mask (B, 1, T, S) bool or None; positions (B, T) int -> (B, T, E)."""
    embed = x.shape[-1]
    dense = lambda name: Projection((embed, self.num_heads, self.head_dim),
                                    ('embed', 'heads', 'kv'), 1, self.attention_bias, self.dtype,
                                    name=name)
    q, k, v = dense('query')(x), dense('key')(x), dense('value')(x)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    if self.use_rotary:
      q, k = (rotary(t, positions, max_length=self.max_length) for t in (q, k))
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'kv'))

    causal = self.causal
    if self.decode:
      k, v, mask = self._update_cache(k, v, positions)
      causal = False  # The cache mask already hides the future.
    if self.attention == 'explicit':
      out = self._explicit_attention(q, k, v, mask, causal)
    elif mask is None:
      out = (causal_dot_product_attention if causal else dot_product_attention)(q, k, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    return Projection((self.num_heads, self.head_dim, embed), ('heads', 'kv', 'embed'), 2,
                      self.attention_bias, self.dtype, name='out')(out)

  def _explicit_attention(self, q, k, v, mask, causal):
    """softmax(q k^T / sqrt(D) masked) v, as `jax.nn.dot_product_attention` computes it, with
    the weights (B, H, T, S) sown for attention maps."""
    logits = jnp.einsum('bthd,bshd->bhts', q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    if causal:
      causal_mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
      mask = causal_mask if mask is None else mask & causal_mask
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    self.sow('intermediates', 'attention_weights', weights)
    return jnp.einsum('bhts,bshd->bthd', weights.astype(v.dtype), v)

  def _update_cache(self, k, v, positions):
    """Writes row b's new keys/values (B, T, H, D) at its own positions (B, T) (rows may be
    at different positions: decode slots); returns the whole cache and its mask. Positions
    past max_length are dropped."""
    batch = k.shape[0]
    shape = (batch, self.max_length, self.num_heads, self.head_dim)
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
    rows = jnp.arange(batch)[:, None]
    cached_k.value = cached_k.value.at[rows, positions].set(k, mode='drop')
    cached_v.value = cached_v.value.at[rows, positions].set(v, mode='drop')
    # Query at position p sees cached positions <= p (everything written is <= p + length).
    mask = jnp.arange(self.max_length)[None, None, None, :] <= positions[:, None, :, None]
    return cached_k.value, cached_v.value, mask


class MLP(nn.Module):
  """Dense(mlp_dim) -> activation (see ACTIVATIONS) -> Dense(E)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  activation: str = 'gelu_tanh'

  @nn.compact
  def __call__(self, x):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {", ".join(ACTIVATIONS)}, got '
                       f'{self.activation!r}')
    h = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=logical(nn.initializers.lecun_normal(), 'embed', 'mlp'))(x)
    h = nn.with_logical_constraint(ACTIVATIONS[self.activation](h), ('batch', 'length', 'mlp'))
    return nn.Dense(x.shape[-1], dtype=self.dtype,
                    kernel_init=logical(nn.initializers.lecun_normal(), 'mlp', 'embed'))(h)


class BlockOptions(AttentionOptions):
  """A block's settings: attention's, plus the MLP width and activation, the dropout rate,
  the LayerNorm epsilon, and where the LayerNorms sit (post_norm: after each residual sum,
  as in BERT; else before each branch, as in GPT-2 and ViT)."""
  mlp_dim: int = 1024
  dropout: float = 0.0
  activation: str = 'gelu_tanh'
  norm_epsilon: float = 1e-6
  post_norm: bool = False


def layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over 'embed', with logical names on its scale and bias."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name,
                      scale_init=logical(nn.initializers.ones, 'embed'),
                      bias_init=logical(nn.initializers.zeros, 'embed'))


class Block(BlockOptions):
  """Residual block with dropout. Pre-LayerNorm: x + attn(LN(x)), then + mlp(LN(x));
  post-LayerNorm: LN(x + attn(x)), then LN(x + mlp(x))."""

  @nn.compact
  def __call__(self, x, mask, positions, train: bool):
    norm1, norm2 = (layer_norm(self.norm_epsilon, self.dtype, name) for name in ('norm1', 'norm2'))
    attention = MultiHeadAttention(**options_of(self, AttentionOptions),
                                   head_dim=x.shape[-1] // self.num_heads, name='attention')
    mlp = MLP(self.mlp_dim, self.dtype, self.activation, name='mlp')
    dropout = Dropout(self.dropout, deterministic=not train)
    if self.post_norm:
      x = norm1(x + dropout(attention(x, mask=mask, positions=positions)))
      x = norm2(x + dropout(mlp(x)))
    else:
      x = x + dropout(attention(norm1(x), mask=mask, positions=positions))
      x = x + dropout(mlp(norm2(x)))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class _ScannedBlock(Block):
  """A Block with nn.scan's (carry, *broadcast) -> (carry, output) signature."""

  @nn.compact
  def __call__(self, x, mask, positions, train: bool):
    return super().__call__(x, mask, positions, train), None


class Encoder(BlockOptions):
  """`num_layers` Blocks and (pre-LayerNorm blocks) a final LayerNorm. scan: one traced
  layer, params stacked on a leading 'layers' axis (fast compiles for deep stacks); remat:
  recompute each block's activations in the backward pass."""
  num_layers: int = 4
  scan: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x, *, mask=None, positions=None, train: bool = False):
    kwargs = options_of(self, BlockOptions)
    block = _ScannedBlock if self.scan else Block
    if self.remat:  # `train` (argument 4, counting self) picks the code path: static.
      block = nn.remat(block, static_argnums=(4,), prevent_cse=not self.scan)
    if self.scan:
      stack = nn.scan(block, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True}, length=self.num_layers,
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = stack(**kwargs, name='layers')(x, mask, positions, train)
    else:
      for i in range(self.num_layers):
        x = block(**kwargs, name=f'layer{i}')(x, mask, positions, train)
    if self.post_norm:  # Each block already ends in a LayerNorm.
      return x
    return layer_norm(self.norm_epsilon, self.dtype, 'final_norm')(x)


def padding_mask(tokens: jax.Array, pad_id: int = 0) -> jax.Array:
  """(B, 1, 1, S) bool: True where the key is a real token."""
  return (tokens != pad_id)[:, None, None, :]


class TransformerOptions(nn.Module):
  """The size and training options of the Transformer models (GPT, ViT, the BERT
  classifiers); `encoder(...)` builds their layer stack from them. activation,
  norm_epsilon and attention_bias are what published checkpoints need to match
  (`jaxmodels.pretrained`): GPT-2 is gelu_tanh / 1e-5 / biases, BERT and ViT gelu_erf /
  1e-12 / biases."""
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 256
  mlp_dim: int = 1024
  dropout: float = 0.1
  scan_layers: bool = False
  remat: bool = False
  attention: str = 'fused'  # 'explicit' sows the attention weights (see AttentionOptions).
  activation: str = 'gelu_tanh'
  norm_epsilon: float = 1e-6
  attention_bias: bool = False
  dtype: Dtype = jnp.float32

  def encoder(self, *, causal: bool, use_rotary: bool, decode: bool = False,
              max_length: int = 2048, post_norm: bool = False,
              name: str = 'encoder') -> Encoder:
    return Encoder(num_heads=self.num_heads, causal=causal, use_rotary=use_rotary, decode=decode,
                   max_length=max_length, attention=self.attention,
                   attention_bias=self.attention_bias, dtype=self.dtype, mlp_dim=self.mlp_dim,
                   dropout=self.dropout, activation=self.activation,
                   norm_epsilon=self.norm_epsilon, post_norm=post_norm,
                   num_layers=self.num_layers, scan=self.scan_layers, remat=self.remat,
                   name=name)
