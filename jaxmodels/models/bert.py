"""BERT (Devlin et al. 2019) as published: token + position + token-type embeddings ->
LayerNorm -> post-LayerNorm Transformer encoder (exact GELU, LayerNorm epsilon 1e-12,
biased projections) -> pooler (Dense + tanh on the first, [CLS], token). The defaults
are BERT's, so a Hugging Face BERT checkpoint (`jaxmodels.pretrained`) gives the same
numbers; `BertClassifier` puts a classification head on the pooled output.

Shapes: tokens (B, T) int32 with 0 (pad_id) as padding; token_types (B, T) int32 or None
(all zeros: one segment).
"""

import flax.linen as nn
import jax.numpy as jnp

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


class BertEncoder(BertOptions):
  """tokens (B, T) -> (hidden states (B, T, E), pooled (B, E)), both float32.

  hidden states are the last layer's outputs (a sentence embedding is their mean over the
  real tokens); pooled is tanh(Dense(hidden[:, 0])), BERT's sequence summary.
  """

  @nn.compact
  def __call__(self, tokens, token_types=None, *, train: bool = False):
    embed = lambda n, name: nn.Embed(
        n, self.embed_dim, dtype=self.dtype, name=name,
        embedding_init=logical(nn.initializers.normal(0.02), 'vocab', 'embed'))
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    table = self.param('position_embedding',
                       logical(nn.initializers.normal(0.02), 'length', 'embed'),
                       (self.max_positions, self.embed_dim))
    x = (embed(self.vocab_size, 'token_embed')(tokens)
         + table[None, :tokens.shape[1]].astype(self.dtype)
         + embed(self.type_vocab_size, 'type_embed')(token_types))
    x = layer_norm(self.norm_epsilon, self.dtype, 'embed_norm')(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.encoder(causal=False, use_rotary=False, post_norm=True)(
        x, mask=padding_mask(tokens, self.pad_id), train=train)
    pooled = jnp.tanh(nn.Dense(self.embed_dim, dtype=self.dtype, name='pooler',
                               kernel_init=logical(nn.initializers.lecun_normal(), 'embed',
                                                   None))(x[:, 0]))
    return x.astype(jnp.float32), pooled.astype(jnp.float32)


class BertClassifier(BertOptions):
  """tokens (B, T) int -> logits (B, num_classes) float32: BertEncoder ('bert'), dropout on
  the pooled output, then Dense ('classifier'), as BertForSequenceClassification."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, token_types=None):
    encoder = BertEncoder(**options_of(self, BertOptions), name='bert')
    _, pooled = encoder(tokens, token_types, train=train)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(pooled).astype(
        jnp.float32)


def bert_encoder_of(classifier: BertClassifier) -> BertEncoder:
  """The BertEncoder with `classifier`'s settings, to apply on its own to the classifier's
  params['bert']: hidden states (B, T, E) for sentence embeddings, pooled (B, E)."""
  return BertEncoder(**options_of(classifier, BertOptions))
