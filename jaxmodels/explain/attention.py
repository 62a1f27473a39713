"""Attention maps of the Transformer models (ViT, the BERT-style encoder, GPT): the softmax
weights of every layer, and attention rollout (Abnar & Zuidema 2020).

The weights come from the models' explicit attention path (`attention='explicit'`, which
gives the fused path's outputs and sows its softmax weights); the model runs that path only
here, when asked.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.errors import InputError

HEAD_FUSIONS = ('mean', 'max', 'min')


def _natural(path) -> tuple:
  """Sort key of a tree path that puts 'layer10' after 'layer9'."""
  text = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
  return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text))


def attention_weights(module: nn.Module, variables, inputs) -> jax.Array:
  """(L, B, H, T, S) float32: each layer's softmax attention weights for `inputs`, in layer
  order (scanned layers come stacked; listed ones are sorted by their index)."""
  if 'attention' not in {f.name for f in getattr(module, '__dataclass_fields__', {}).values()}:
    raise InputError(f'{type(module).__name__} has no attention layers; attention maps need a '
                     'Transformer model (vit, bert, gpt)')
  _, state = module.clone(attention='explicit').apply(variables, inputs, mutable=['intermediates'])
  found = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(
      state.get('intermediates', {}))[0] if any('attention_weights' in str(k) for k in path)]
  found.sort(key=lambda item: _natural(item[0]))
  layers = [leaf if leaf.ndim == 5 else leaf[None] for _, leaf in found]  # Scanned: (L, ...).
  return jnp.concatenate(layers).astype(jnp.float32)


def attention_rollout(weights, *, head_fusion: str = 'mean', residual: bool = True) -> jax.Array:
  """Attention rollout (B, T, S): how much each output token draws on each input token
  through all L layers, R = A_L ... A_2 A_1 with A_l the heads' `head_fusion` of layer l's
  weights, plus the identity for the residual stream (0.5 A + 0.5 I, rows renormalised)
  when `residual`. weights: (L, B, H, T, S) with T == S (self-attention)."""
  if head_fusion not in HEAD_FUSIONS:
    raise InputError(f'head_fusion must be one of {", ".join(HEAD_FUSIONS)}, got {head_fusion!r}')
  weights = jnp.asarray(weights, jnp.float32)
  fused = getattr(jnp, head_fusion)(weights, axis=2)  # (L, B, T, S)
  if residual:
    fused = 0.5 * fused + 0.5 * jnp.eye(fused.shape[-1], dtype=fused.dtype)
    fused = fused / fused.sum(-1, keepdims=True)
  rollout = lambda r, a: (jnp.einsum('bts,bsu->btu', a, r), None)
  return jax.lax.scan(rollout, fused[0], fused[1:])[0]


def cls_rollout(module: nn.Module, variables, inputs, **options) -> jax.Array:
  """(B, S): the rollout row of the first token ([CLS] in ViT and the BERT-style encoder)
  over every token, the [CLS] token itself included."""
  return attention_rollout(attention_weights(module, variables, inputs), **options)[:, 0]
