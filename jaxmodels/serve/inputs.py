"""Raw inputs -> the arrays an artifact takes, as its manifest says: image files or bytes
(PNG, JPEG, anything Pillow reads), arrays (.npy files, JSON lists) and texts. Bad input
is one `InputError` line naming what is wrong, for the command line and the server alike."""
import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxmodels import data as data_lib
from jaxmodels.errors import InputError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MAX_IMAGE_PIXELS = 4096 * 4096  # Larger images are refused before they are decoded.


class InputReader:
  """Reads examples for the artifact whose manifest this is: `array`, `images`, `texts`,
  `files` each return (N, *input shape) in the input dtype."""

  def __init__(self, manifest: dict):
    self.spec, self.tokenizer = manifest['input'], manifest.get('tokenizer')
    self.shape, self.dtype = tuple(self.spec['shape']), np.dtype(self.spec['dtype'])
    self.low, self.high = self.spec['range']
    self._vocabulary = None

  @property
  def kind(self) -> str:
    return self.spec['kind']

  def array(self, values, name: str = 'inputs') -> np.ndarray:
    """One example (*shape) or a batch (N, *shape) of numbers (nested lists or an array);
    grayscale images may leave out their channel axis."""
    try:
      array = np.asarray(values)
    except (ValueError, TypeError):
      raise InputError(f'{name} is ragged: every example must have shape '
                       f'{list(self.shape)}') from None
    if array.dtype.kind not in 'iuf':
      raise InputError(f'{name} must hold numbers, got {_kind_of(array)}')
    if self.kind == 'image' and self.shape[-1] == 1 and array.shape[-2:] == self.shape[:2]:
      array = array[..., None]  # (H, W) or (N, H, W) grayscale.
    if array.shape == self.shape:
      array = array[None]
    if array.ndim != len(self.shape) + 1 or array.shape[1:] != self.shape:
      raise InputError(f'{name} has shape {list(array.shape)}: expected {list(self.shape)} or '
                       f'[N, {", ".join(map(str, self.shape))}]')
    if array.shape[0] == 0:
      raise InputError(f'{name} holds no examples')
    if not np.all(np.isfinite(array)):
      raise InputError(f'{name} holds NaN or infinite values')
    if array.min() < self.low or array.max() > self.high:
      raise InputError(f'{name} holds values in [{array.min():g}, {array.max():g}]: '
                       f'{self.kind} inputs must lie in [{self.low}, {self.high}]')
    if self.dtype.kind in 'iu' and not np.all(array == np.round(array)):
      raise InputError(f'{name} must hold integer token ids')
    return array.astype(self.dtype)

  def images(self, encoded: list[bytes], names: list[str] | None = None) -> np.ndarray:
    """Encoded image files -> (N, H, W, C), converted and resized as the manifest says."""
    if self.kind != 'image':
      raise InputError(f'this model takes {self.kind} inputs, not images')
    if not encoded:
      raise InputError('images holds no images')
    names = names or [f'images[{i}]' for i in range(len(encoded))]
    return np.stack([self._decode(data, name) for data, name in zip(encoded, names)])

  def _decode(self, data: bytes, name: str) -> np.ndarray:
    height, width, channels = self.shape
    try:
      with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
          raise InputError(f'{name} is {image.width}x{image.height} pixels: at most '
                           f'{MAX_IMAGE_PIXELS:,} are read')
        image = image.convert('L' if channels == 1 else 'RGB')
        if image.size != (width, height):
          image = image.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, np.float32)
    except InputError:
      raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
      raise InputError(f'{name} is not an image Pillow can read (PNG, JPEG, ...)') from None
    return pixels.reshape(height, width, channels).astype(self.dtype)

  def texts(self, texts: list[str]) -> np.ndarray:
    """Texts -> (N, max_length) token ids, cleaned and encoded with the run's vocabulary."""
    if self.tokenizer is None:
      raise InputError(f'this model takes {self.kind} inputs, not texts')
    if not texts or not all(isinstance(t, str) for t in texts):
      raise InputError('texts must be a non-empty list of strings')
    if self._vocabulary is None:  # Built once: a dict of the whole vocabulary.
      self._vocabulary = data_lib.WordVocabulary.from_words(self.tokenizer['vocabulary'])
    return self._vocabulary.encode([data_lib.clean_text(t) for t in texts],
                                   self.tokenizer['max_length']).astype(self.dtype)

  def files(self, paths: list[str], stdin=None) -> tuple[list[str], np.ndarray]:
    """(a name per example, examples) from command-line inputs: image files, .npy arrays
    (one example or a batch), text files (one example per line) or, for text models, the
    text itself; '-' reads lines from stdin."""
    names, parts = [], []
    for path in paths:
      if path.endswith('.npy'):
        array = self.array(_load_npy(path), name=path)
        names += [path] if len(array) == 1 else [f'{path}[{i}]' for i in range(len(array))]
        parts.append(array)
      elif self.kind == 'image':
        if not os.path.isfile(path):
          raise InputError(f'no image file {path!r}: pass PNG/JPEG files or .npy arrays')
        with open(path, 'rb') as f:
          parts.append(self.images([f.read()], [path]))
        names.append(path)
      else:
        lines = _text_lines(path, stdin)
        parts.append(self.texts(lines))
        names += lines
    if not parts:
      raise InputError('no inputs given')
    return names, np.concatenate(parts)


def _load_npy(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise InputError(f'no file {path!r}') from None
  except (ValueError, OSError) as e:
    raise InputError(f'{path} is not a numeric .npy array ({e})') from None


def _text_lines(source: str, stdin) -> list[str]:
  """The non-empty lines of stdin ('-') or of a text file, else `source` itself as one text."""
  if source == '-':
    lines = stdin.read().splitlines()
  elif os.path.isfile(source):
    with open(source, encoding='utf-8', errors='replace') as f:
      lines = f.read().splitlines()
  else:
    return [source]
  lines = [line for line in lines if line.strip()]
  if not lines:
    raise InputError(f'{"stdin" if source == "-" else source} holds no text lines')
  return lines


def _kind_of(array: np.ndarray) -> str:
  return {'b': 'booleans', 'U': 'strings', 'S': 'bytes', 'O': 'mixed values or nulls'}.get(
      array.dtype.kind, str(array.dtype))
