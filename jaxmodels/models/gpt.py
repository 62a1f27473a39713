"""GPT: a decoder-only Transformer language model, and sampling with a KV cache.

`GPT(...)(tokens, train=...)` gives next-token logits for every position.
`generate(...)` prefills the cache with the prompt in one call, then decodes one
token per step inside a jit-compiled `lax.fori_loop`. Rows may also decode at positions
of their own (`GPT(...)(tokens, positions=...)`, decode slots of a server), each sampled
with its own key and settings (`sample_logits_per_row`).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models.layers import Dropout
from jaxmodels.models.transformer import TransformerOptions, logical


class GPT(TransformerOptions):
  """tokens (B, T) int -> logits (B, T, vocab_size) float32.

  positions: 'rotary' (in every attention layer) or 'learned' (added to the
  embeddings). tie_embeddings: the output layer reuses the token embedding.
  """
  vocab_size: int = 256
  max_length: int = 256
  positions: str = 'rotary'
  tie_embeddings: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, positions=None):
    """tokens (B, T) int; positions (B, T) int32 or None: each token's position. None: 0..T-1,
    or in decode mode where the cache's one index says (the whole batch at one position,
    advanced by T). Given in decode mode, each row writes the cache at its own positions
    (decode slots at different points of their sequences) and the index is left alone."""
    if self.positions not in ('rotary', 'learned'):
      raise ValueError(f"positions must be 'rotary' or 'learned', got {self.positions!r}")
    embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name='embed',
                     embedding_init=logical(nn.initializers.normal(0.02), 'vocab', 'embed'))
    x = embed(tokens)
    length = tokens.shape[1]
    if self.decode:  # Declared even when unused, so the cache has one structure.
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      if positions is None:  # Positions continue from what the cache holds.
        positions = index.value + jnp.arange(length)
        index.value = index.value + length
    elif positions is None:
      positions = jnp.arange(length)
    positions = jnp.broadcast_to(positions, tokens.shape)
    if self.positions == 'learned':
      table = self.param('position_embedding',
                         logical(nn.initializers.normal(0.02), 'length', 'embed'),
                         (self.max_length, self.embed_dim))
      x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
    x = Dropout(self.dropout, deterministic=not train)(x)
    x = self.encoder(causal=True, use_rotary=self.positions == 'rotary', decode=self.decode,
                     max_length=self.max_length, name='decoder')(x, positions=positions,
                                                                 train=train)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, dtype=self.dtype, name='head',
                        kernel_init=logical(nn.initializers.normal(0.02), 'embed', 'vocab'))(x)
    return logits.astype(jnp.float32)


def sample_logits(rng, logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Draws token ids (B,) from logits (B, V): temperature 0 is greedy; top_k keeps the k
  most likely; top_p keeps the smallest set whose probability reaches p (nucleus)."""
  if temperature == 0.0:
    return jnp.argmax(logits, -1)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
    # The smallest logit still inside the nucleus: keep everything at least as likely.
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits)


def sample_logits_per_row(keys, logits, temperature, top_k, top_p):
  """`sample_logits` with each row's own settings and key: keys (B,) typed PRNG keys,
  logits (B, V), temperature (B,) float (0: greedy), top_k (B,) int (0: off), top_p (B,)
  float (>= 1: off) -> token ids (B,) int32. Row b draws what
  `sample_logits(keys[b], logits[b:b+1], temperature[b], top_k[b], top_p[b])` draws, whatever
  the other rows hold (a decode slot's tokens do not depend on the other requests)."""
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  greedy = temperature <= 0.0
  scaled = logits / jnp.where(greedy, 1.0, temperature)[:, None]
  sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
  # top_k as data, not a shape: the k-th largest read from the sorted row (lax.top_k's value).
  kth = jnp.take_along_axis(sorted_logits, jnp.clip(top_k - 1, 0, vocab - 1)[:, None], axis=-1)
  scaled = jnp.where((top_k[:, None] > 0) & (scaled < kth), -jnp.inf, scaled)
  sorted_logits = jnp.where((top_k[:, None] > 0) & (sorted_logits < kth), -jnp.inf,
                            sorted_logits)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, -1), -1)
  cutoff_index = jnp.sum(cumulative < top_p[:, None], axis=-1, keepdims=True)
  cutoff = jnp.take_along_axis(sorted_logits, jnp.minimum(cutoff_index, vocab - 1), axis=-1)
  scaled = jnp.where((top_p[:, None] < 1.0) & (scaled < cutoff), -jnp.inf, scaled)
  sampled = jax.vmap(jax.random.categorical)(keys, scaled)
  return jnp.where(greedy, jnp.argmax(logits, -1), sampled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k',
                                              'top_p'))
def generate(model: GPT, params, prompt, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0):
  """prompt (B, P) int32 -> (B, P + max_new_tokens): the prompt and its continuation.

  P + max_new_tokens must not exceed model.max_length (the cache size).
  """
  if prompt.shape[1] + max_new_tokens > model.max_length:
    raise ValueError(f'prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds '
                     f'max_length {model.max_length}')
  decoder = model.clone(decode=True, dropout=0.0)
  cache_shapes = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), prompt[:, :1])['cache']
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)  # Position 0.
  logits, state = decoder.apply({'params': params, 'cache': cache}, prompt, mutable=['cache'])
  tokens = jnp.concatenate(
      [prompt, jnp.zeros((prompt.shape[0], max_new_tokens), prompt.dtype)], axis=1)

  def step(i, carry):
    tokens, cache, last_logits, rng = carry
    rng, key = jax.random.split(rng)
    token = sample_logits(key, last_logits, temperature, top_k, top_p).astype(tokens.dtype)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt.shape[1] + i))
    logits, state = decoder.apply({'params': params, 'cache': cache}, token[:, None],
                                  mutable=['cache'])
    return tokens, state['cache'], logits[:, -1], rng

  tokens, *_ = jax.lax.fori_loop(0, max_new_tokens, step,
                                 (tokens, state['cache'], logits[:, -1], rng))
  return tokens
