"""Loads an exported jaxmodels language model for a decode server with jax and numpy alone
(and, for a BPE tokenizer, `tokenizers`; never jaxmodels, flax or safetensors):
`jaxmodels export` copies this file into every language-model artifact directory.

    import lm_artifact                                  # DIR/lm_artifact.py, DIR on sys.path
    model = lm_artifact.LMArtifact('DIR')
    model.warm_up()                                     # every program compiled now
    cache = model.new_cache()
    cache, token = model.prefill(cache, 3, model.encode('The '), seed=7, temperature=0.8,
                                 top_k=40, top_p=0.95)  # slot 3's prompt -> its first token
    cache, tokens = model.decode(cache, tokens, positions, seeds, steps, temperature, top_k,
                                 top_p)                 # every slot one step: (S,) arrays
    text = model.decode(ids)                            # ids -> text

The directory holds manifest.json (slots, max_length, prefill buckets, vocabulary, cache
layout, tokenizer, the run), weights.safetensors, one serialised `jax.export` program per
prefill bucket (prefill_<L>.jaxexport) and decode.jaxexport, and for BPE models the
tokenizer's tokenizer.json. A request's n-th generated token is drawn with the key
fold_in(key(seed), n): prefill draws n = 0, decode is told n per slot (`steps`), so a
request's tokens are the same whatever the other slots hold.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

MANIFEST, WEIGHTS, LOADER = 'manifest.json', 'weights.safetensors', 'lm_artifact.py'
PROGRAM_SUFFIX = '.jaxexport'
# safetensors' dtype names -> numpy (the ones an export writes).
SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64,
                      'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
                      'BOOL': np.bool_}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file: an 8-byte little-endian header length, a JSON header
  {name: {dtype, shape, data_offsets}}, then the raw little-endian data."""
  with open(path, 'rb') as f:
    size = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(size))
    data = f.read()
  tensors = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    start, end = entry['data_offsets']
    dtype = np.dtype(SAFETENSORS_DTYPES[entry['dtype']]).newbyteorder('<')
    tensors[name] = np.frombuffer(data[start:end], dtype).reshape(entry['shape']).astype(
        dtype.newbyteorder('='))
  return tensors


def byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte-level BPE alphabet: the printable character standing for each byte -> the
  byte (printable bytes stand for themselves, the others for chr(256 + n))."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


class LMArtifact:
  """An exported language model: tokenizer, cache and the prefill and decode programs, each
  called through a `jax.jit` of its deserialised `Exported.call` with the cache donated
  (updated in place: the cache passed in is consumed; use the one returned). `warm_up`
  compiles every program once; a program not yet compiled compiles on its first call."""

  def __init__(self, directory: str):
    self.directory = directory
    with open(os.path.join(directory, MANIFEST), encoding='utf-8') as f:
      self.manifest = json.load(f)
    manifest = self.manifest
    if manifest.get('kind') != 'language_model':
      raise ValueError(f'{directory} is not a language-model artifact (kind '
                       f'{manifest.get("kind")!r})')
    self.slots, self.max_length = manifest['slots'], manifest['max_length']
    self.buckets = tuple(manifest['prefill_buckets'])
    self.vocab_size = manifest['vocab_size']
    self.eos_id = manifest['tokenizer'].get('eos_id')
    self.exported = {}
    for name, file in manifest['files']['programs'].items():
      with open(os.path.join(directory, file), 'rb') as f:
        self.exported[name] = jax.export.deserialize(bytearray(f.read()))
    self.weights = jax.device_put(read_safetensors(os.path.join(directory, WEIGHTS)))
    self._tokenizer = self._byte_level = None
    if manifest['tokenizer']['kind'] == 'bpe':
      from tokenizers import Tokenizer  # Only BPE artifacts need it.
      self._tokenizer = Tokenizer.from_file(os.path.join(directory,
                                                         manifest['tokenizer']['file']))
      decoder = json.loads(self._tokenizer.to_str()).get('decoder') or {}
      if decoder.get('type') == 'ByteLevel':  # Tokens spell bytes: exact bytes for streaming.
        self._byte_level = byte_level_alphabet()
    self._compiled = {}

  # Tokens.

  def encode(self, text: str) -> list[int]:
    """The ids of `text`: its UTF-8 bytes, or the BPE tokenizer's ids."""
    if self._tokenizer is None:
      return list(text.encode('utf-8'))
    return self._tokenizer.encode(text).ids

  def decode(self, *args, **kwargs):
    """Both `decode`s of the server's interface, told apart by their arguments: decode(ids)
    -> str is `decode_text`; decode(cache, tokens, positions, seeds, steps, temperature,
    top_k, top_p) -> (cache, next tokens) is `decode_step`."""
    if len(args) + len(kwargs) == 1:
      return self.decode_text(*args, **kwargs)
    return self.decode_step(*args, **kwargs)

  def decode_text(self, ids) -> str:
    """The text of `ids` (an incomplete UTF-8 sequence becomes U+FFFD)."""
    if self._tokenizer is None:
      return self.decode_bytes(ids).decode('utf-8', errors='replace')
    return self._tokenizer.decode([int(i) for i in ids])

  def decode_bytes(self, ids) -> bytes:
    """The bytes `ids` stand for, for streaming: the concatenation over a sequence's pieces
    equals the bytes of the whole (a character split across tokens is completed by the
    next piece). Byte-level BPE: each token's bytes, special tokens left out; other
    tokenizers: the decoded text's UTF-8."""
    if self._tokenizer is None:
      return bytes(int(i) for i in ids)
    if self._byte_level is None:
      return self.decode_text(ids).encode('utf-8')
    added = self._tokenizer.get_added_tokens_decoder()
    pieces = []
    for i in map(int, ids):
      if i in added:
        pieces.append(b'' if added[i].special else added[i].content.encode('utf-8'))
      else:
        pieces.append(bytes(self._byte_level[c] for c in self._tokenizer.id_to_token(i)))
    return b''.join(pieces)

  # The cache and the programs.

  def new_cache(self) -> dict:
    """The key/value cache of every slot, zeros on the device: {name: (S, max_length, heads,
    head_dim)} in the model dtype, as the manifest's 'cache' lists."""
    return {name: jnp.zeros(spec['shape'], spec['dtype'])
            for name, spec in self.manifest['cache'].items()}

  def _program(self, name: str):
    """The program compiled for its exported shapes, once."""
    if name not in self._compiled:
      exported = self.exported[name]
      args, kwargs = jax.tree.unflatten(
          exported.in_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.in_avals])
      self._compiled[name] = jax.jit(exported.call, donate_argnums=(1,)).lower(
          *args, **kwargs).compile()
    return self._compiled[name]

  def warm_up(self) -> None:
    """Compiles every prefill bucket and decode now, so that no request waits for XLA."""
    for name in self.exported:
      self._program(name)

  def bucket(self, length: int) -> int:
    """The smallest prefill bucket that holds a prompt of `length` tokens."""
    return next(b for b in self.buckets if b >= length)

  def _check_ids(self, ids: np.ndarray, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f'{what} must be token ids in [0, {self.vocab_size}), got '
                       f'{int(ids.min())}..{int(ids.max())}')

  def prefill(self, cache, slot: int, prompt_ids, *, seed: int, temperature: float, top_k: int,
              top_p: float) -> tuple[dict, int]:
    """Reads a prompt into slot `slot` (positions 0..len-1; whatever the slot held before is
    overwritten or hidden) and draws its first new token (step n = 0 of `seed`). Returns
    (cache, that token). ValueError for an empty prompt or one longer than max_length - 1
    (at least one token must fit after it)."""
    ids = np.asarray(prompt_ids, np.int64).reshape(-1)
    if not 0 < len(ids) < self.max_length:
      raise ValueError(f'the prompt must have 1 to {self.max_length - 1} tokens, got {len(ids)}')
    if not 0 <= slot < self.slots:
      raise ValueError(f'slot must be in [0, {self.slots}), got {slot}')
    self._check_ids(ids, 'prompt_ids')
    bucket = self.bucket(len(ids))
    tokens = np.zeros(bucket, np.int32)
    tokens[:len(ids)] = ids
    cache, token = self._program(f'prefill_{bucket}')(
        self.weights, cache, np.int32(slot), tokens, np.int32(len(ids)),
        np.uint32(seed % 2**32), np.float32(temperature), np.int32(top_k), np.float32(top_p))
    return cache, int(token)

  def decode_step(self, cache, tokens, positions, seeds, steps, temperature, top_k,
                  top_p) -> tuple[dict, np.ndarray]:
    """One step of every slot: slot s feeds tokens[s] at positions[s] (its last token and
    where it stands: the prompt length, plus one per step since) and draws step n =
    steps[s] of seeds[s]. Each argument is (S,) (a scalar is broadcast); idle slots are
    computed and ignored (any token and position in range). Returns (cache, next tokens
    (S,) int32 numpy)."""
    vector = lambda x, dtype: np.broadcast_to(np.asarray(x), (self.slots,)).astype(dtype)
    tokens, positions = vector(tokens, np.int32), vector(positions, np.int32)
    self._check_ids(tokens, 'tokens')
    if positions.min() < 0 or positions.max() >= self.max_length:
      raise ValueError(f'positions must be in [0, {self.max_length}), got '
                       f'{int(positions.min())}..{int(positions.max())}')
    seeds = vector(np.asarray(seeds, np.uint64) % 2**32, np.uint32)
    cache, next_tokens = self._program('decode')(
        self.weights, cache, tokens, positions, seeds, vector(steps, np.int32),
        vector(temperature, np.float32), vector(top_k, np.int32), vector(top_p, np.float32))
    return cache, np.asarray(next_tokens)
