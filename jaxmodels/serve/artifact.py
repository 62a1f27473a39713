"""Loads an exported jaxmodels artifact with jax and numpy alone (no jaxmodels, flax or
safetensors needed): `jaxmodels export` copies this file into every artifact directory.

    import artifact                                    # DIR/artifact.py, with DIR on sys.path
    model = artifact.Artifact('DIR')
    logits = model.logits(images)                      # (N, H, W, C) pixels 0..255 -> (N, classes)
    print(artifact.top_k(logits, model.class_names))   # [[{'label', 'index', 'probability'}, ...]]

An artifact directory holds `manifest.json` (input spec, class names, tokenizer, jax
version, the training run and its test metrics), `model.jaxexport` (the serialised
inference function `f(weights, inputs) -> logits` with a symbolic batch dimension, for the
platforms the manifest lists) and `weights.safetensors` (its weights; int8 with per-channel
scales when quantised).
"""
import json
import os

import jax
import numpy as np

MANIFEST, FUNCTION, WEIGHTS, LOADER = ('manifest.json', 'model.jaxexport', 'weights.safetensors',
                                       'artifact.py')
DEFAULT_TOP_K = 5
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


def softmax(logits) -> np.ndarray:
  """Probabilities (float64) over the last axis."""
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def top_k(logits, class_names=None, k: int = DEFAULT_TOP_K) -> list[list[dict]]:
  """For each row of logits (N, C): the k most probable classes, most probable first, as
  {'label': name, 'index': class id, 'probability': float} (ties: the lower id first)."""
  probabilities = softmax(logits)
  order = np.argsort(-probabilities, axis=-1, kind='stable')[:, :k]
  name = lambda c: class_names[c] if class_names else str(c)
  return [[{'label': name(int(c)), 'index': int(c), 'probability': float(p[c])} for c in row]
          for p, row in zip(probabilities, order)]


class Artifact:
  """An exported model: `logits(inputs)` for any batch size, `compile(batch_size)` for a fixed
  one (ahead of time: it never compiles again). `manifest` is manifest.json."""

  def __init__(self, directory: str):
    self.directory = directory
    with open(os.path.join(directory, MANIFEST), encoding='utf-8') as f:
      self.manifest = json.load(f)
    with open(os.path.join(directory, FUNCTION), 'rb') as f:
      self.exported = jax.export.deserialize(bytearray(f.read()))
    self.weights = jax.device_put(read_safetensors(os.path.join(directory, WEIGHTS)))
    spec = self.manifest['input']
    self.input_shape, self.input_dtype = tuple(spec['shape']), np.dtype(spec['dtype'])
    self._call = jax.jit(self.exported.call)

  @property
  def class_names(self) -> list[str] | None:
    return self.manifest.get('class_names')

  def logits(self, inputs) -> np.ndarray:
    """inputs (N, *input_shape) as the manifest's input spec says -> logits (N, C) float32."""
    return np.asarray(self._call(self.weights, np.asarray(inputs, self.input_dtype)))

  def compile(self, batch_size: int):
    """fn(inputs (batch_size, *input_shape)) -> logits (batch_size, C) as a numpy array,
    compiled now; another batch size is an error, never a new compilation."""
    example = jax.ShapeDtypeStruct((batch_size, *self.input_shape), self.input_dtype)
    compiled = jax.jit(self.exported.call).lower(self.weights, example).compile()
    return lambda inputs: np.asarray(compiled(self.weights, inputs))
