"""Text classifiers over token ids: an Embedding + LSTM and a BERT-style Transformer encoder.

Both take tokens (B, T) int (0 is padding) and return logits (B, num_classes) float32.
"""
import flax.linen as nn
import jax.numpy as jnp

from jaxmodels.models.transformer import TransformerOptions, logical, padding_mask


class LSTMClassifier(nn.Module):
  """Embed -> (bidirectional) LSTM over the real tokens -> dropout -> Dense.

  The sequence summary is each direction's final hidden state; `seq_lengths`
  makes the LSTM stop at the last real token, so padding changes nothing.
  """
  vocab_size: int = 20_000
  num_classes: int = 2
  embed_dim: int = 128
  hidden: int = 128
  bidirectional: bool = True
  dropout: float = 0.3
  pad_id: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    lengths = jnp.sum(tokens != self.pad_id, axis=1)
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)(tokens)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    forward = nn.RNN(nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype), return_carry=True,
                     name='forward')
    (_, summary), _ = forward(x, seq_lengths=lengths)
    if self.bidirectional:
      backward = nn.RNN(nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype), return_carry=True,
                        reverse=True, keep_order=True, name='backward')
      (_, last), _ = backward(x, seq_lengths=lengths)
      summary = jnp.concatenate([summary, last], axis=-1)
    summary = nn.Dropout(self.dropout, deterministic=not train)(summary)
    return nn.Dense(self.num_classes, dtype=self.dtype)(summary).astype(jnp.float32)


class TransformerClassifier(TransformerOptions):
  """BERT-style: token + learned position embeddings, a bidirectional Encoder with a
  padding mask, then the first token's output (the [CLS] token the tokenizer puts
  first) -> Dense."""
  vocab_size: int = 20_000
  num_classes: int = 2
  max_length: int = 256
  pad_id: int = 0

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                 embedding_init=logical(nn.initializers.normal(0.02), 'vocab', 'embed'))(tokens)
    table = self.param('position_embedding',
                       logical(nn.initializers.normal(0.02), 'length', 'embed'),
                       (self.max_length, self.embed_dim))
    x = x + table[None, :tokens.shape[1]].astype(x.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = self.encoder(causal=False, use_rotary=False)(x, mask=padding_mask(tokens, self.pad_id),
                                                     train=train)
    cls = nn.Dropout(self.dropout, deterministic=not train)(x[:, 0])
    return nn.Dense(self.num_classes, dtype=self.dtype)(cls).astype(jnp.float32)
