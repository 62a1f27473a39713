"""GPT: KV-cache decoding equals a full recompute, the causal mask holds, it memorises a
tiny corpus, and sampling respects temperature / top-k / top-p."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.data import ByteTokenizer
from jaxmodels.models import GPT, generate, sample_logits

SMALL = dict(vocab_size=64, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, max_length=24,
             dropout=0.0)


def _params(model, tokens):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), tokens)['params'])


@pytest.mark.parametrize('positions', ['rotary', 'learned'])
@pytest.mark.parametrize('scan_layers', [False, True])
def test_kv_cache_decoding_equals_full_recompute(positions, scan_layers):
  model = GPT(**SMALL, positions=positions, scan_layers=scan_layers)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 20), 0, 64)
  params = _params(model, tokens)
  full = jax.jit(model.apply)({'params': params}, tokens)

  decoder = model.clone(decode=True)
  cache = jax.tree.map(jnp.zeros_like, jax.eval_shape(decoder.init, jax.random.PRNGKey(0),
                                                      tokens[:, :1])['cache'])
  decode = jax.jit(lambda variables, tokens: decoder.apply(variables, tokens, mutable=['cache']))
  logits, state = decode({'params': params, 'cache': cache}, tokens[:, :7])  # The prompt at once,
  pieces = [logits]
  for t in range(7, 20):  # then one token at a time.
    logits, state = decode({'params': params, **state}, tokens[:, t:t + 1])
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5, rtol=2e-5)


def test_future_tokens_do_not_change_past_logits():
  model = GPT(**SMALL)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, 20), 0, 64)
  params = _params(model, tokens)
  changed = tokens.at[:, 12:].set((tokens[:, 12:] + 7) % 64)
  a, b = model.apply({'params': params}, tokens), model.apply({'params': params}, changed)
  np.testing.assert_array_equal(a[:, :12], b[:, :12])
  assert not np.allclose(a[:, 12:], b[:, 12:])


def test_memorises_a_tiny_corpus_and_generates_it_back():
  text = 'jaxmodels trains pure functions. ' * 4
  tokens = ByteTokenizer.encode(text)
  x, y = tokens[None, :-1], tokens[None, 1:]
  model = jm.linen_model(GPT(vocab_size=256, num_layers=2, num_heads=2, embed_dim=64, mlp_dim=128,
                             max_length=x.shape[1], dropout=0.0))
  tx = optax.adam(3e-3)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), x)
  loss = lambda logits, batch: jm.softmax_cross_entropy(logits, batch['labels'])
  step = jax.jit(jm.make_train_step(model.apply, loss, tx))
  for _ in range(150):
    state, metrics = step(state, {'inputs': x, 'labels': y})
  assert jm.summarize(metrics)['loss'] < 0.02
  gpt = GPT(vocab_size=256, num_layers=2, num_heads=2, embed_dim=64, mlp_dim=128,
            max_length=x.shape[1], dropout=0.0)
  out = generate(gpt, state.params, x[:, :10], jax.random.PRNGKey(0), max_new_tokens=40,
                 temperature=0.0)
  assert ByteTokenizer.decode(out[0]) == text[:50]


def test_sampling_controls():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
  draw = lambda **kw: np.asarray(sample_logits(jax.random.PRNGKey(0), logits, **kw))
  np.testing.assert_array_equal(draw(temperature=0.0), 0)
  np.testing.assert_array_equal(draw(top_k=1), 0)
  assert set(draw(top_k=2)) == {0, 1}
  assert set(draw(top_p=0.75)) == {0, 1}  # 0.5 + 0.3 reaches 0.75: the nucleus is {0, 1}.
  freq = np.bincount(draw(), minlength=4) / 4000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
  hot = np.bincount(draw(temperature=5.0), minlength=4) / 4000  # Flatter than p.
  assert hot[3] > 0.15


def test_generate_refuses_to_run_past_the_cache():
  model = GPT(**SMALL)
  prompt = jnp.zeros((1, 20), jnp.int32)
  with pytest.raises(ValueError, match='exceeds max_length 24'):
    generate(model, _params(model, prompt), prompt, jax.random.PRNGKey(0), max_new_tokens=8)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_explicit_attention_equals_the_fused_path_and_sows_its_weights(scan_layers):
  """The explicit softmax path (for attention maps) gives the fused path's outputs, causal
  and rotary (GPT) and with a padding mask (the BERT-style encoder)."""
  from jaxmodels.models import TransformerClassifier
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 1, 64)
  tokens = tokens.at[1, 8:].set(0)  # Padding in the second example.
  for model in (GPT(**SMALL, scan_layers=scan_layers),
                TransformerClassifier(vocab_size=64, num_classes=3, num_layers=2, num_heads=2,
                                      embed_dim=32, mlp_dim=64, max_length=12, dropout=0.0,
                                      scan_layers=scan_layers)):
    params = _params(model, tokens)
    fused = jax.jit(model.apply)({'params': params}, tokens)
    explicit_model = model.clone(attention='explicit')
    explicit, sown = jax.jit(lambda p, t, m=explicit_model: m.apply(
        {'params': p}, t, mutable=['intermediates']))(params, tokens)
    np.testing.assert_allclose(explicit, fused, atol=1e-5, rtol=1e-5)
    weights = jax.tree.leaves(sown['intermediates'])
    assert len(weights) == (1 if scan_layers else 2)  # Scanned layers stack on axis 0.
    per_layer = weights[0].reshape(-1, 2, 2, 12, 12)  # (layers, B, H, T, S)
    np.testing.assert_allclose(per_layer.sum(-1), 1.0, atol=1e-5)  # Rows are distributions.


def test_training_with_dropout_resumes_to_the_same_bits():
  """Dropout masks are a function of (state.rng, state.step): a run stopped and continued
  from its state ends with the params of the uninterrupted run, bit for bit."""
  model = jm.linen_model(GPT(**{**SMALL, 'dropout': 0.1}))
  tokens = np.random.default_rng(0).integers(0, 64, (64, 25)).astype(np.int32)
  data = (tokens[:, :-1], tokens[:, 1:])
  tx = optax.adamw(1e-3, weight_decay=0.1)
  loss = lambda logits, batch: jm.train.softmax_cross_entropy(logits, batch['labels'])
  step = jm.make_train_step(model.apply, loss, tx)
  fresh = lambda: jm.create_train_state(model, tx, jax.random.PRNGKey(0), data[0][:1])
  kw = dict(batch_size=8, progress=False, log_every_steps=2)
  straight, _ = jm.fit(fresh(), step, data, num_steps=6, **kw)
  half, _ = jm.fit(fresh(), step, data, num_steps=3, **kw)
  resumed, _ = jm.fit(jax.tree.map(jnp.array, half), step, data, num_steps=6, **kw)
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  variables = {'params': straight.params}  # Dropout is on in training.
  assert not np.array_equal(model.apply(variables, data[0][:2], train=False)[0], model.apply(
      variables, data[0][:2], train=True, rngs={'dropout': jax.random.PRNGKey(3)})[0])


def test_rotary_equals_a_float64_reference_near_and_far_from_position_zero():
  from jaxmodels.models.transformer import rotary
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 2, 8))
  positions = jnp.stack([jnp.arange(16), jnp.arange(2000, 2016)])
  half = 4
  angles = np.asarray(positions, np.float64)[..., None, None] * 10_000.0 ** (-np.arange(half) /
                                                                             half)
  x64 = np.asarray(x, np.float64)
  x1, x2 = x64[..., :half], x64[..., half:]
  expected = np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                             x2 * np.cos(angles) + x1 * np.sin(angles)], -1)
  np.testing.assert_allclose(jax.jit(lambda x, p: rotary(x, p, max_length=2048))(x, positions),
                             expected, atol=2e-6)
  # Its gradient is the transposed (inverse) rotation of the output's gradient.
  g = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(rotary(x, positions, max_length=2048) * g)))(x)
  g64 = np.asarray(g, np.float64)
  g1, g2 = g64[..., :half], g64[..., half:]
  np.testing.assert_allclose(grad, np.concatenate([g1 * np.cos(angles) + g2 * np.sin(angles),
                                                   g2 * np.cos(angles) - g1 * np.sin(angles)],
                                                  -1), atol=2e-6)
