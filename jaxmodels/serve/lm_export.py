"""A language model -> an artifact for a decode server that runs with jax alone
(`jaxmodels export` of a language-model run, or of a GPT-2 directory 'hf:DIR').

The server keeps S decode slots, one request each, and a preallocated key/value cache
(per layer, key and value (S, max_length, heads, head_dim) in the model dtype; the loader
creates it, zeros). Its programs, exported with `jax.export` (cache donated):

  prefill_<L>(weights, cache, slot () int32, tokens (L,) int32, length () int32,
              seed () uint32, temperature () f32, top_k () int32, top_p () f32)
      -> (cache, first_token () int32)
    one prompt, padded to the bucket L, at positions 0..L-1 of one slot; the first new
    token sampled from the logits at position length-1;
  decode(weights, cache, tokens (S,) int32, positions (S,) int32, seeds (S,) uint32,
         steps (S,) int32, temperature (S,) f32, top_k (S,) int32, top_p (S,) f32)
      -> (cache, next_tokens (S,) int32)
    one step of every slot at its own position (idle slots are computed and ignored).

A request's n-th generated token is drawn with the key `fold_in(key(seed), n)` (prefill is
n = 0, decode passes steps = n) by `models.gpt.sample_logits_per_row`, so it does not depend
on what the other slots hold. Beside the programs: weights.safetensors, manifest.json
(slots, max_length, buckets, vocabulary, cache layout, tokenizer, the run), the tokenizer's
tokenizer.json for BPE models, and the loader `lm_artifact.py`.
"""
import datetime
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from jaxmodels import pretrained
from jaxmodels.errors import CheckpointError, InputError
from jaxmodels.models import GPT
from jaxmodels.models.gpt import sample_logits_per_row
from jaxmodels.runs.model_card import read_card
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.serve import lm_artifact
from jaxmodels.serve.artifact_export import FORMAT_VERSION, PLATFORMS, write_directory

HF = 'hf:'
DEFAULT_SLOTS = 16
SMALLEST_BUCKET = 16
TOKENIZER_FILE = 'tokenizer.json'


def prefill_buckets(max_length: int) -> tuple[int, ...]:
  """Prompt lengths a prefill is compiled for: powers of two from 16 below max_length, and
  max_length."""
  buckets, length = [], SMALLEST_BUCKET
  while length < max_length:
    buckets.append(length)
    length *= 2
  return (*buckets, max_length)


def is_language_model(source: str) -> bool:
  """Whether `source` ('hf:DIR', or a finished run's workdir) is a language model that
  `export_lm` takes: 'hf:DIR' always (the loader says what it holds); a run of the
  language_model task or of a GPT."""
  if source.startswith(HF):
    return True
  card = read_card(source)
  return card.get('task') == 'language_model' or card['model']['name'] == 'gpt'


def _cache_tree(flat: dict) -> dict:
  """The artifact's cache {'decoder/layer0/attention/cached_key': array, ...} -> GPT's
  'cache' collection (whose position index is unused: positions are passed)."""
  return {**traverse_util.unflatten_dict(flat, sep='/'), 'index': jnp.zeros((), jnp.int32)}


def _cache_flat(tree: dict) -> dict:
  return {k: v for k, v in traverse_util.flatten_dict(tree, sep='/').items() if k != 'index'}


def _slot_axis(array) -> int:
  return array.ndim - 4  # (S, max_length, H, D), behind a layer axis when layers are scanned.


def cache_shapes(module: GPT, slots: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The cache of `slots` decode slots: {name: (slots, max_length, heads, head_dim)} in the
  model dtype (with scan_layers, a leading layer axis)."""
  decoder = module.clone(decode=True, dropout=0.0)
  shapes = jax.eval_shape(decoder.init, jax.random.PRNGKey(0),
                          jnp.zeros((slots, 1), jnp.int32))['cache']
  return _cache_flat(shapes)


def _sample(seeds, steps, logits, temperature, top_k, top_p):
  keys = jax.vmap(lambda seed, n: jax.random.fold_in(jax.random.key(seed), n))(seeds, steps)
  return sample_logits_per_row(keys, logits, temperature, top_k, top_p)


def prefill_function(module: GPT, bucket: int):
  """prefill_<bucket> (see the module docstring) for weights {'params/...': array}."""
  decoder = module.clone(decode=True, dropout=0.0)

  def prefill(weights, cache, slot, tokens, length, seed, temperature, top_k, top_p):
    variables = traverse_util.unflatten_dict(weights, sep='/')
    # Only the slot's rows: the other slots' keys and values are neither read nor computed.
    rows = {k: jax.lax.dynamic_slice_in_dim(v, slot, 1, _slot_axis(v)) for k, v in cache.items()}
    logits, state = decoder.apply({**variables, 'cache': _cache_tree(rows)}, tokens[None],
                                  positions=jnp.arange(bucket)[None], mutable=['cache'])
    written = _cache_flat(state['cache'])
    cache = {k: jax.lax.dynamic_update_slice_in_dim(v, written[k], slot, _slot_axis(v))
             for k, v in cache.items()}
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, keepdims=True)  # (1, V)
    token = _sample(seed[None], jnp.zeros(1, jnp.int32), last, temperature[None], top_k[None],
                    top_p[None])
    return cache, token[0]
  return prefill


def decode_function(module: GPT):
  """decode (see the module docstring) for weights {'params/...': array}."""
  decoder = module.clone(decode=True, dropout=0.0)

  def decode(weights, cache, tokens, positions, seeds, steps, temperature, top_k, top_p):
    variables = traverse_util.unflatten_dict(weights, sep='/')
    logits, state = decoder.apply({**variables, 'cache': _cache_tree(cache)}, tokens[:, None],
                                  positions=positions[:, None], mutable=['cache'])
    return _cache_flat(state['cache']), _sample(seeds, steps, logits[:, 0], temperature, top_k,
                                                top_p)
  return decode


def export_programs(module: GPT, weights: dict, slots: int, platforms=PLATFORMS
                    ) -> dict[str, jax.export.Exported]:
  """{'prefill_<L>': ..., 'decode': ...}, each exported with the cache (argument 1) donated:
  jax.export keeps the donation in the program (tf.aliasing_output on the cache's inputs);
  the loader donates it again on its jit, which is what makes the update in place."""
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
  abstract_weights = {k: spec(v.shape, v.dtype) for k, v in weights.items()}
  cache = cache_shapes(module, slots)
  scalar = lambda dtype: spec((), dtype)
  vector = lambda dtype: spec((slots,), dtype)
  export = lambda f, *args: jax.export.export(jax.jit(f, donate_argnums=(1,)),
                                              platforms=tuple(platforms))(abstract_weights,
                                                                           cache, *args)
  programs = {f'prefill_{bucket}': export(
      prefill_function(module, bucket), scalar('int32'), spec((bucket,), 'int32'),
      scalar('int32'), scalar('uint32'), scalar('float32'), scalar('int32'), scalar('float32'))
      for bucket in prefill_buckets(module.max_length)}
  programs['decode'] = export(decode_function(module), vector('int32'), vector('int32'),
                              vector('uint32'), vector('int32'), vector('float32'),
                              vector('int32'), vector('float32'))
  return programs


def tokenizer_of(module: GPT, inputs: dict | None, hf_directory: str | None
                 ) -> tuple[dict, str | None]:
  """(the manifest's 'tokenizer', the text of its tokenizer.json or None). What the model's
  ids mean, first from its run's inputs spec (model.json): 'bytes' (the language_model task:
  UTF-8 bytes, even when its weights came from elsewhere), or a tokenizer recorded whole;
  else the tokenizer.json of the Hugging Face directory its weights came from. eos_id: that
  directory's config.json eos_token_id. InputError when nothing says."""
  kind = (inputs or {}).get('kind')
  if kind == 'bytes':
    return {'kind': 'bytes', 'eos_id': None}, None
  path = hf_directory and os.path.join(hf_directory, TOKENIZER_FILE)
  if kind == 'tokenizer':
    text = json.dumps(inputs['tokenizer'])
  elif path and os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      text = f.read()
  else:
    raise InputError(f'the language model has no tokenizer: its run does not train on bytes '
                     f'and {hf_directory or "it"} has no {TOKENIZER_FILE}', key='workdir')
  from tokenizers import Tokenizer  # The serve stage's optional dependency, on first use.
  size = Tokenizer.from_str(text).get_vocab_size()
  if size > module.vocab_size:
    raise InputError(f'the tokenizer has {size} tokens, more than the model\'s vocab_size '
                     f'{module.vocab_size}', key='workdir')
  eos = pretrained.read_config(hf_directory).get('eos_token_id') if hf_directory else None
  return {'kind': 'bpe', 'file': TOKENIZER_FILE,
          'eos_id': eos if isinstance(eos, int) else None}, text


def _init_from(run: TrainedRun) -> str:
  """The run's init_from ('' when none, or when its checkpoint keeps no config)."""
  try:
    return run.config().get('init_from', '') or ''
  except (CheckpointError, FileNotFoundError, KeyError):
    return ''


def load_language_model(source: str, step: int | None = None
                        ) -> tuple[GPT, dict, dict, str | None, dict | None]:
  """(module, variables, run record, Hugging Face directory or None, the run's inputs spec)
  of 'hf:DIR' (a GPT-2 directory) or a finished run's workdir."""
  if source.startswith(HF):
    directory = source[len(HF):]
    name, arguments = pretrained.pretrained_model(directory)
    if name != 'gpt':
      raise InputError(f'{directory} holds a {name} model, not a language model (GPT-2)',
                       key='workdir')
    module, variables = pretrained.load_pretrained(directory)
    model = {'name': name, 'arguments': arguments}
    record = {'workdir': None, 'task': None, 'dataset': None, 'step': None, 'model': model,
              'test': None, 'init_from': HF + os.path.abspath(directory)}
    return module, variables, record, directory, None
  run = TrainedRun.load(source, step)
  if not isinstance(run.module, GPT):
    raise InputError(f'{source} trained a {run.card["model"]["name"]}, not a GPT language '
                     'model', key='workdir')
  init_from = _init_from(run)
  record = {'workdir': os.path.abspath(source), 'task': run.card['task'],
            'dataset': run.card.get('dataset'), 'step': run.card['step'],
            'model': run.card['model'], 'test': run.card.get('test'),
            'init_from': init_from or None}
  hf_directory = init_from[len(HF):] if init_from.startswith(HF) else None
  return run.module, run.variables, record, hf_directory, run.card.get('inputs')


def export_lm(source: str, out: str, *, slots: int = DEFAULT_SLOTS, platforms=PLATFORMS,
              step: int | None = None) -> dict:
  """Writes the decode-server artifact of `source` ('hf:DIR', or a finished language-model
  run's workdir) to the new directory `out` (atomically) and returns its manifest."""
  if slots < 1:
    raise InputError(f'slots must be at least 1, got {slots}', key='slots')
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown or not platforms:
    raise InputError(f'platforms must be some of {", ".join(PLATFORMS)}, got '
                     f'{", ".join(platforms) or "none"}', key='platforms')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise InputError(f'{out} already exists: export into a new directory', key='out')
  module, variables, record, hf_directory, inputs = load_language_model(source, step)
  tokenizer, tokenizer_text = tokenizer_of(module, inputs, hf_directory)
  weights = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      {'params': variables['params']}, sep='/').items()}
  programs = export_programs(module, weights, slots, platforms)
  buckets = prefill_buckets(module.max_length)
  manifest = {
      'format': 'jaxmodels-export', 'format_version': FORMAT_VERSION, 'kind': 'language_model',
      'files': {'programs': {name: f'{name}{lm_artifact.PROGRAM_SUFFIX}' for name in programs},
                'weights': lm_artifact.WEIGHTS, 'loader': lm_artifact.LOADER,
                'tokenizer': tokenizer.get('file')},
      'programs': {
          'prefill': 'prefill_<L>(weights, cache, slot () int32, tokens (L,) int32, length () '
                     'int32, seed () uint32, temperature () f32, top_k () int32, top_p () f32) '
                     '-> (cache, first_token () int32)',
          'decode': 'decode(weights, cache, tokens (S,) int32, positions (S,) int32, seeds (S,) '
                    'uint32, steps (S,) int32, temperature (S,) f32, top_k (S,) int32, top_p '
                    '(S,) f32) -> (cache, next_tokens (S,) int32)',
          'donated': 'cache (argument 1)', 'platforms': list(platforms),
          'sampling': 'token n of a request: key fold_in(key(seed), n) (prefill n = 0); '
                      'temperature 0 greedy, top_k 0 and top_p 1 off'},
      'slots': slots, 'max_length': module.max_length, 'prefill_buckets': list(buckets),
      'vocab_size': module.vocab_size,
      'cache': {name: {'shape': list(s.shape), 'dtype': jnp.dtype(s.dtype).name}
                for name, s in cache_shapes(module, slots).items()},
      'tokenizer': tokenizer, 'jax_version': jax.__version__, 'run': record,
      'exported_at': datetime.datetime.now().astimezone().isoformat()}
  _write(out, manifest, programs, weights, tokenizer_text)
  return manifest


def _write(out: str, manifest: dict, programs: dict, weights: dict,
           tokenizer_text: str | None) -> None:
  def write_files(directory: str) -> None:
    for name, exported in programs.items():
      with open(os.path.join(directory, manifest['files']['programs'][name]), 'wb') as f:
        f.write(exported.serialize())
    safetensors.numpy.save_file(weights, os.path.join(directory, lm_artifact.WEIGHTS))
    if tokenizer_text is not None:
      with open(os.path.join(directory, TOKENIZER_FILE), 'w', encoding='utf-8') as f:
        f.write(tokenizer_text)
    with open(os.path.join(directory, lm_artifact.MANIFEST), 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=2)
    shutil.copyfile(lm_artifact.__file__, os.path.join(directory, lm_artifact.LOADER))
  write_directory(out, write_files)
