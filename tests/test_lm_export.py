"""Language-model artifacts for a decode server (`serve.lm_export`, loaded by `lm_artifact`):
driven through the loader alone, with requests interleaved over the decode slots, each slot's
greedy tokens are `models.gpt.generate`'s for its prompt alone (a trained byte-level run) and
transformers' (the gpt2_bpe fixture); sampled tokens depend on the seed alone, not on the
other slots; the loader runs without jaxmodels; the cache is updated in place."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxmodels import console
from jaxmodels.cli import default_extensions
from jaxmodels.errors import InputError
from jaxmodels.models import GPT, generate, sample_logits
from jaxmodels.models.gpt import sample_logits_per_row
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.serve import lm_export
from jaxmodels.serve.lm_artifact import LMArtifact
from jaxmodels.tasks import language_model, runner

BPE_FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'hf', 'gpt2_bpe')
SLOTS = 4
GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0)
WORDS = ('the model reads a prompt and writes the next byte of the text while the server keeps '
         'every slot busy with another request').split()


def _text(seed: int = 0, lines: int = 600) -> str:
  rng = np.random.default_rng(seed)
  return '\n'.join(' '.join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + '.'
                   for _ in range(lines))


@pytest.fixture(scope='module')
def byte_run(tmp_path_factory):
  """A byte-level GPT (rotary positions) trained 100 steps through the runner (enough for
  greedy continuations that depend on their prompts)."""
  directory = tmp_path_factory.mktemp('lm')
  (directory / 'text.txt').write_text(_text())
  extensions = default_extensions()
  config = runner.default_config(language_model.TASK, extensions)
  config.data.update(text_file=str(directory / 'text.txt'), seq_len=64)
  config.model = dict(name='gpt', num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64,
                      dropout=0.0)
  config.optimizer.update(learning_rate=1e-2, warmup_steps=5)
  config.sample.update(max_new_tokens=4, num_samples=1)
  config.train.update(num_steps=100, batch_size=16, log_every_steps=100, eval_every_steps=100,
                      eval_batch_size=64, steps_per_dispatch=1, progress=False)
  workdir = str(directory / 'run')
  runner.run(language_model.TASK, config, workdir, extensions=extensions)
  return TrainedRun.load(workdir)


@pytest.fixture(scope='module')
def byte_artifact(byte_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('artifacts') / 'bytes')
  assert console.main(['export', byte_run.workdir, '--out', out, '--platforms', 'cpu',
                       '--slots', str(SLOTS)]) == 0
  model = LMArtifact(out)
  model.warm_up()
  return model


@pytest.fixture(scope='module')
def bpe_artifact(tmp_path_factory):
  """The gpt2_bpe fixture exported straight from its directory, as version 1 of a repository."""
  repo = tmp_path_factory.mktemp('repo')
  assert console.main(['export', f'hf:{BPE_FIXTURE}', '--repo', str(repo), '--platforms', 'cpu',
                       '--slots', str(SLOTS)]) == 0
  model = LMArtifact(str(repo / '1'))
  model.warm_up()
  return model


def drive(model: LMArtifact, requests: list[dict], first_slot: int = 0) -> list[list[int]]:
  """Serves `requests` ({'prompt': ids, 'new': tokens wanted, 'seed', sampling settings}) the
  way a continuous-batching server does: at most one prefill between two decode steps, so
  slots are prefilled while others are mid-decode; a freed slot takes the next request.
  Slots are taken from `first_slot` on, cyclically. Returns each request's new tokens."""
  cache, queue = model.new_cache(), list(range(len(requests)))
  free = [(first_slot + i) % model.slots for i in range(model.slots)]
  active, out = {}, [[] for _ in requests]  # slot -> request index
  settings = lambda r: {k: requests[r].get(k, v) for k, v in GREEDY.items()}
  while queue or active:
    if queue and free:
      r, slot = queue.pop(0), free.pop(0)
      cache, token = model.prefill(cache, slot, requests[r]['prompt'],
                                   seed=requests[r].get('seed', 0), **settings(r))
      out[r].append(token)
      if len(out[r]) < requests[r]['new']:
        active[slot] = r
      else:
        free.append(slot)
    if not active:
      continue
    vectors = {k: np.zeros(model.slots, dtype) for k, dtype in (
        ('tokens', np.int32), ('positions', np.int32), ('seeds', np.uint32),
        ('steps', np.int32), ('temperature', np.float32), ('top_k', np.int32),
        ('top_p', np.float32))}
    vectors['top_p'][:] = 1.0
    for slot, r in active.items():
      vectors['tokens'][slot] = out[r][-1]
      vectors['positions'][slot] = len(requests[r]['prompt']) + len(out[r]) - 1
      vectors['seeds'][slot] = requests[r].get('seed', 0)
      vectors['steps'][slot] = len(out[r])
      for k, v in settings(r).items():
        vectors[k][slot] = v
    cache, tokens = model.decode(cache, **vectors)
    for slot, r in list(active.items()):
      out[r].append(int(tokens[slot]))
      if len(out[r]) == requests[r]['new']:
        del active[slot]
        free.append(slot)
  return out


def test_interleaved_slots_decode_each_prompt_as_generate_does(byte_run, byte_artifact):
  """20 byte prompts of mixed lengths (every bucket, exact bucket sizes and max_length - 1)
  over 4 slots at temperature 0: each request's tokens are generate()'s for it alone."""
  text = _text(seed=1)
  lengths = [1, 5, 16, 17, 40, 63, 5, 16, 1, 40, 17, 63, 5, 16, 40, 1, 17, 5, 63, 16]
  requests = []
  for i, length in enumerate(lengths):
    prompt = byte_artifact.encode(text[i * 7:i * 7 + length])
    requests.append({'prompt': prompt, 'new': min(12 - length % 5, 64 - length)})
  assert byte_artifact.buckets == (16, 32, 64) and byte_artifact.vocab_size == 256
  got = drive(byte_artifact, requests)
  for request, tokens in zip(requests, got):
    prompt = np.asarray(request['prompt'], np.int32)[None]
    expected = generate(byte_run.module, byte_run.variables['params'], prompt,
                        jax.random.PRNGKey(0), max_new_tokens=request['new'], temperature=0.0)
    assert tokens == np.asarray(expected)[0, prompt.shape[1]:].tolist(), request
  assert len({tuple(tokens) for tokens in got}) > 10  # The continuations follow their prompts.


def test_bpe_fixture_decodes_as_transformers_generate(bpe_artifact):
  reference = json.loads(open(os.path.join(BPE_FIXTURE, 'reference_generate.json')).read())
  assert bpe_artifact.manifest['tokenizer'] == {'kind': 'bpe', 'file': 'tokenizer.json',
                                                'eos_id': reference['eos_id']}
  assert bpe_artifact.eos_id == 0 and bpe_artifact.vocab_size == 320
  generations = reference['generations']
  requests = [{'prompt': bpe_artifact.encode(g['prompt']), 'new': len(g['ids'])}
              for g in generations]
  assert [r['prompt'] for r in requests] == [g['prompt_ids'] for g in generations]
  for first_slot in (0, 3):  # Other slots, other neighbours: the same tokens.
    got = drive(bpe_artifact, requests, first_slot)
    assert got == [g['ids'] for g in generations]
  assert [bpe_artifact.decode(g['ids']) for g in generations] == [g['text'] for g in generations]
  # Streaming: the bytes of the pieces add up to the text, a character split across tokens too.
  for g in generations:
    pieces = b''.join(bpe_artifact.decode_bytes([i]) for i in g['prompt_ids'] + g['ids'])
    assert pieces.decode('utf-8', errors='replace') == g['prompt'] + g['text']


def test_sampled_tokens_depend_on_the_seed_not_on_the_other_slots(byte_artifact):
  model = byte_artifact
  sampled = dict(temperature=0.9, top_k=40, top_p=0.95)
  request = {'prompt': model.encode('The server keeps'), 'new': 24, 'seed': 1234, **sampled}
  alone = drive(model, [request])[0]
  others = [{'prompt': model.encode(text), 'new': n, 'seed': seed, **sampled}
            for text, n, seed in (('Every', 9, 1), ('A model is', 30, 2),
                                  ('The text', 5, 3), ('x', 14, 4))]
  busy = drive(model, [*others[:2], request, *others[2:]], first_slot=2)
  assert busy[2] == alone
  assert drive(model, [{**request, 'seed': 1235}])[0] != alone
  assert drive(model, [{**request, **GREEDY}])[0] != alone  # Sampling leaves the greedy path.


def test_a_padded_prompt_gives_the_exact_length_prefill(byte_run):
  """A prompt of 10 tokens in the 16 bucket: the same first token (sampled) and the same keys
  and values at its positions as a prefill compiled for exactly 10."""
  module, params = byte_run.module, byte_run.variables['params']
  weights = {f'params/{k}': v for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  cache = {k: jnp.zeros(s.shape, s.dtype) for k, s in lm_export.cache_shapes(module, 3).items()}
  prompt = np.asarray(list(b'Every slot'), np.int32)
  sampling = (np.uint32(7), np.float32(0.8), np.int32(5), np.float32(0.9))
  results = []
  for bucket in (10, 16):
    tokens = np.zeros(bucket, np.int32)
    tokens[:10] = prompt
    prefill = jax.jit(lm_export.prefill_function(module, bucket))
    results.append(prefill(weights, cache, np.int32(1), tokens, np.int32(10), *sampling))
  (exact_cache, exact_token), (padded_cache, padded_token) = results
  assert int(exact_token) == int(padded_token)
  for name in exact_cache:
    np.testing.assert_allclose(padded_cache[name][1, :10], exact_cache[name][1, :10], atol=1e-5)
    assert not np.any(np.asarray(padded_cache[name])[[0, 2]])  # Other slots untouched.


def test_the_cache_is_donated_and_updated_in_place(byte_artifact):
  cache = byte_artifact.new_cache()
  pointers = {k: v.unsafe_buffer_pointer() for k, v in cache.items()}
  new, _ = byte_artifact.prefill(cache, 2, [65, 66], seed=0, **GREEDY)
  assert all(v.is_deleted() for v in cache.values())
  assert {k: v.unsafe_buffer_pointer() for k, v in new.items()} == pointers
  newer, tokens = byte_artifact.decode(new, np.full(SLOTS, 67), np.full(SLOTS, 2), 0, 1,
                                       0.0, 0, 1.0)
  assert all(v.is_deleted() for v in new.values()) and tokens.shape == (SLOTS,)
  assert {k: v.unsafe_buffer_pointer() for k, v in newer.items()} == pointers
  manifest = byte_artifact.manifest
  assert manifest['tokenizer'] == {'kind': 'bytes', 'eos_id': None}
  assert manifest['programs']['donated'] == 'cache (argument 1)'
  assert manifest['cache']['decoder/layer0/attention/cached_key'] == {
      'shape': [SLOTS, 64, 2, 16], 'dtype': 'float32'}
  assert manifest['run']['task'] == 'language_model' and manifest['run']['test']['loss'] > 0
  assert byte_artifact.decode(byte_artifact.encode('héllo')) == 'héllo'


def test_bad_prompts_and_sources_are_one_line_errors(byte_artifact, tmp_path):
  cache = byte_artifact.new_cache()
  with pytest.raises(ValueError, match='1 to 63 tokens, got 0'):
    byte_artifact.prefill(cache, 0, [], seed=0, **GREEDY)
  with pytest.raises(ValueError, match='1 to 63 tokens, got 64'):
    byte_artifact.prefill(cache, 0, [1] * 64, seed=0, **GREEDY)
  with pytest.raises(ValueError, match=r'slot must be in \[0, 4\)'):
    byte_artifact.prefill(cache, 4, [1], seed=0, **GREEDY)
  with pytest.raises(InputError, match='not a language model'):
    lm_export.export_lm(f'hf:{os.path.join(os.path.dirname(BPE_FIXTURE), "bert")}',
                        str(tmp_path / 'bert'))


# Run in a fresh interpreter where jaxmodels cannot be imported: the artifact's own loader.
LOADER_SCRIPT = """
import json, sys
sys.modules['jaxmodels'] = None  # Any import of it fails.
sys.path.insert(0, sys.argv[1])
import lm_artifact
model = lm_artifact.LMArtifact(sys.argv[1])
model.warm_up()
reference = json.load(open(sys.argv[2]))['generations'][2]
cache, token = model.prefill(model.new_cache(), 1, model.encode(reference['prompt']), seed=0,
                             temperature=0.0, top_k=0, top_p=1.0)
tokens, position = [token], len(reference['prompt_ids'])
while len(tokens) < len(reference['ids']):
  cache, out = model.decode(cache, [0, tokens[-1], 0, 0], [0, position, 0, 0], 0, len(tokens),
                            0.0, 0, 1.0)
  tokens.append(int(out[1]))
  position += 1
print('SAME', tokens == reference['ids'], model.decode(tokens) == reference['text'])
banned = sorted(m for m in sys.modules if m and m.split('.')[0] in ('flax', 'safetensors')
                and sys.modules[m] is not None)
print('BANNED', banned, sys.modules['jaxmodels'])
"""


def test_the_loader_runs_without_jaxmodels(bpe_artifact, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['XLA_FLAGS'] = ''
  result = subprocess.run(
      [sys.executable, '-c', LOADER_SCRIPT, bpe_artifact.directory,
       os.path.join(BPE_FIXTURE, 'reference_generate.json')], capture_output=True, text=True,
      env=env, cwd=tmp_path, timeout=180)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'SAME True True' in result.stdout and 'BANNED [] None' in result.stdout
  assert sorted(os.listdir(bpe_artifact.directory)) == [
      'decode.jaxexport', 'lm_artifact.py', 'manifest.json', 'prefill_16.jaxexport',
      'prefill_32.jaxexport', 'prefill_64.jaxexport', 'tokenizer.json', 'weights.safetensors']


@pytest.mark.parametrize('positions, scan_layers', [('rotary', False), ('learned', True)])
def test_decode_rows_at_their_own_positions_equal_a_full_recompute(positions, scan_layers):
  """GPT(positions=(B, T)) in decode mode: rows at different points of their sequences share
  one step; each row's logits are those of its whole sequence run at once, whatever stale
  keys its cache rows hold beyond its position."""
  model = GPT(vocab_size=64, num_layers=2, num_heads=2, embed_dim=32, mlp_dim=64, max_length=24,
              dropout=0.0, positions=positions, scan_layers=scan_layers)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 20), 0, 64)
  params = model.init(jax.random.PRNGKey(1), tokens)['params']
  full = jax.jit(model.apply)({'params': params}, tokens)
  decoder = model.clone(decode=True)
  cache = jax.tree.map(jnp.zeros_like, jax.eval_shape(decoder.init, jax.random.PRNGKey(0),
                                                      tokens[:, :1])['cache'])
  step = jax.jit(lambda variables, tokens, positions: decoder.apply(
      variables, tokens, positions=positions, mutable=['cache']))
  lengths = np.array([4, 9, 13])
  # Prefill 13 positions in every row; past its own length a row holds other tokens.
  prefill = np.where(np.arange(13) < lengths[:, None], tokens[:, :13], (tokens[:, :13] + 5) % 64)
  logits, state = step({'params': params, 'cache': cache}, prefill,
                       np.broadcast_to(np.arange(13), (3, 13)))
  for b in range(3):
    np.testing.assert_allclose(logits[b, :lengths[b]], full[b, :lengths[b]], atol=2e-5)
  for i in range(7):
    at = lengths + i
    logits, state = step({'params': params, **state}, tokens[np.arange(3), at][:, None],
                         at[:, None])
    np.testing.assert_allclose(logits[:, 0], full[np.arange(3), at], atol=2e-5, rtol=2e-5)
  assert int(state['cache']['index']) == 0  # Positions were given: the index is not used.


@pytest.mark.parametrize('temperature, top_k, top_p', [(0.0, 0, 1.0), (1.0, 0, 1.0),
                                                       (0.7, 5, 1.0), (1.3, 0, 0.8),
                                                       (0.9, 7, 0.6), (1.0, 1, 0.3)])
def test_the_per_row_sampler_draws_what_the_scalar_one_draws(temperature, top_k, top_p):
  """Each row with its own key and settings equals `sample_logits` on that row alone; the
  rows' settings are mixed in one batch (this row's among others)."""
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 50)) * 3
  keys = jax.random.split(jax.random.key(5), 6)
  others = [(0.0, 0, 1.0), (1.0, 3, 0.9), (0.5, 0, 0.5), (2.0, 10, 1.0), (1.0, 0, 1.0)]
  settings = [(temperature, top_k, top_p), *others]
  arrays = [jnp.array(column, dtype) for column, dtype in
            zip(zip(*settings), (jnp.float32, jnp.int32, jnp.float32))]
  sampler = jax.jit(sample_logits_per_row)
  for trial in range(10):
    trial_keys = jax.vmap(lambda k, t=trial: jax.random.fold_in(k, t))(keys)
    rows = np.asarray(sampler(trial_keys, logits, *arrays))
    expected = [int(sample_logits(trial_keys[b], logits[b:b + 1], *settings[b])[0])
                for b in range(6)]
    assert rows.tolist() == expected


def test_prefill_buckets():
  assert lm_export.prefill_buckets(64) == (16, 32, 64)
  assert lm_export.prefill_buckets(100) == (16, 32, 64, 100)
  assert lm_export.prefill_buckets(8) == (8,)
  assert lm_export.prefill_buckets(16) == (16,)
  assert isinstance(lm_export.cache_shapes(GPT(max_length=8, num_layers=1), 2), dict)
