"""BERT (Devlin et al. 2019) as published: token + position + token-type embeddings ->
LayerNorm -> post-LayerNorm Transformer encoder (exact GELU, LayerNorm epsilon 1e-12,
biased projections) -> pooler (Dense + tanh on the first, [CLS], token). The defaults
are BERT's, so a Hugging Face BERT checkpoint (`jaxmodels.pretrained`) gives the same
numbers; `BertClassifier` puts a classification head on the pooled output.

Shapes: tokens (B, T) int32; token_types (B, T) int32 or None (all zeros: one segment);
attention_mask (B, T) 0/1 or None (then the tokens equal to pad_id are the padding). Hugging
Face's keywords work as they are: `apply(variables, input_ids, attention_mask=...,
token_type_ids=...)`; a mask is needed where pad_id also occurs inside real text.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.errors import InputError
from jaxmodels.models.transformer import (TransformerOptions, layer_norm, logical, options_of,
                                          padding_mask)


class BertOptions(TransformerOptions):
  """The BERT encoder's settings: TransformerOptions with BERT's defaults, plus the
  vocabulary, the position table size and the number of token types (segments)."""
  vocab_size: int = 30_522
  max_positions: int = 512
  type_vocab_size: int = 2
  pad_id: int = 0
  activation: str = 'gelu_erf'
  norm_epsilon: float = 1e-12
  attention_bias: bool = True


def _segments_and_mask(tokens, token_types, token_type_ids, attention_mask, pad_id: int):
  """(token types (B, T), attention mask (B, 1, 1, T) bool) from the call's optional inputs:
  HF's token_type_ids is token_types by its other name; the mask is attention_mask != 0,
  else tokens != pad_id. InputError (one line) for a shape other than the tokens'."""
  if token_types is not None and token_type_ids is not None:
    raise InputError('pass token_types or token_type_ids (the same input), not both')
  token_types = token_types if token_types is not None else token_type_ids
  for name, value in (('token_type_ids', token_types), ('attention_mask', attention_mask)):
    if value is not None and tuple(value.shape) != tuple(tokens.shape):
      raise InputError(f'{name} {tuple(value.shape)} must have the shape of the tokens '
                       f'{tuple(tokens.shape)}')
  if token_types is None:
    token_types = jnp.zeros_like(tokens)
  if attention_mask is None:  # Inferred: wrong where pad_id occurs inside a real sequence.
    return token_types, padding_mask(tokens, pad_id)
  return token_types, (jnp.asarray(attention_mask) != 0)[:, None, None, :]


class BertEncoder(BertOptions):
  """tokens (B, T) -> (hidden states (B, T, E), pooled (B, E)), both float32.

  hidden states are the last layer's outputs (a sentence embedding is their mean over the
  real tokens); pooled is tanh(Dense(hidden[:, 0])), BERT's sequence summary. token_types
  (or token_type_ids) (B, T) int: segments; attention_mask (B, T) 0/1: 1 for real tokens
  (without it, tokens != pad_id).
  """

  @nn.compact
  def __call__(self, tokens, token_types=None, *, attention_mask=None, token_type_ids=None,
               train: bool = False):
    embed = lambda n, name: nn.Embed(
        n, self.embed_dim, dtype=self.dtype, name=name,
        embedding_init=logical(nn.initializers.normal(0.02), 'vocab', 'embed'))
    token_types, mask = _segments_and_mask(tokens, token_types, token_type_ids, attention_mask,
                                           self.pad_id)
    table = self.param('position_embedding',
                       logical(nn.initializers.normal(0.02), 'length', 'embed'),
                       (self.max_positions, self.embed_dim))
    x = (embed(self.vocab_size, 'token_embed')(tokens)
         + table[None, :tokens.shape[1]].astype(self.dtype)
         + embed(self.type_vocab_size, 'type_embed')(token_types))
    x = layer_norm(self.norm_epsilon, self.dtype, 'embed_norm')(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.encoder(causal=False, use_rotary=False, post_norm=True)(x, mask=mask, train=train)
    pooled = jnp.tanh(nn.Dense(self.embed_dim, dtype=self.dtype, name='pooler',
                               kernel_init=logical(nn.initializers.lecun_normal(), 'embed',
                                                   None))(x[:, 0]))
    return x.astype(jnp.float32), pooled.astype(jnp.float32)


class BertClassifier(BertOptions):
  """tokens (B, T) int -> logits (B, num_classes) float32: BertEncoder ('bert'), dropout on
  the pooled output, then Dense ('classifier'), as BertForSequenceClassification. The
  optional inputs are BertEncoder's: token_types (or token_type_ids), attention_mask."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, token_types=None, attention_mask=None,
               token_type_ids=None):
    encoder = BertEncoder(**options_of(self, BertOptions), name='bert')
    _, pooled = encoder(tokens, token_types, attention_mask=attention_mask,
                        token_type_ids=token_type_ids, train=train)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(pooled).astype(
        jnp.float32)


def bert_encoder_of(classifier: BertClassifier) -> BertEncoder:
  """The BertEncoder with `classifier`'s settings, to apply on its own to the classifier's
  params['bert']: hidden states (B, T, E) for sentence embeddings, pooled (B, E)."""
  return BertEncoder(**options_of(classifier, BertOptions))
