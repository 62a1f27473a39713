"""Text data: corpora for language models, labelled texts for classifiers, cleaning,
a byte-level tokenizer (GPT) and a word vocabulary (classifiers).

Byte-level tokens need no training and no files, cover any text exactly and are
what character-level CPU-sized models want; a word vocabulary built from the
training split is the classic input of LSTM / BERT-style classifiers on small data.
"""
import collections
import os
import re

import numpy as np

from jaxmodels.data import tfds_source
from jaxmodels.data.errors import DataError, DataUnavailableError

# Debian's `fortunes` package: ~2.5 MB of English text in files named by category.
FORTUNES_DIR = '/usr/share/games/fortunes'
PAD, UNK, CLS = 0, 1, 2  # Word ids reserved by `WordVocabulary`.


def _text_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    # Fortune directories also hold index files (.dat) and UTF-8 copies (.u8).
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))
             if os.path.isfile(os.path.join(path, f)) and not f.endswith(('.dat', '.u8'))]
    if files:
      return files
  raise DataError(f'no text at {path!r}: pass a text file or a directory of text files')


def read_text(path: str) -> str:
  """A file, or every file of a directory concatenated (UTF-8; bad bytes replaced)."""
  parts = []
  for name in _text_files(path):
    with open(name, 'rb') as f:
      parts.append(f.read().decode('utf-8', errors='replace'))
  return '\n'.join(parts)


def load_corpus(text_file: str = '', tfds_name: str = 'tiny_shakespeare',
                val_fraction: float = 0.1) -> tuple[str, str, str]:
  """(train text, validation text, source) for language modelling.

  text_file (a file or a directory of files) wins; else tfds `tfds_name`
  ('train' and 'validation' splits); offline without it, Debian's fortunes.
  A local text is split at `val_fraction` from its end.
  """
  if not text_file:
    try:
      return _tfds_corpus(tfds_name)
    except DataUnavailableError:
      if not os.path.isdir(FORTUNES_DIR):
        raise DataUnavailableError(
            f"cannot download {tfds_name!r} from tfds (no network) and no local text: pass "
            '--config.data.text_file=/path/to/text.txt (or apt-get install fortunes)') from None
      text_file = FORTUNES_DIR
  text = read_text(text_file)
  if len(text) < 1000:
    raise DataError(f'{text_file} holds {len(text)} characters: a language model needs more')
  cut = int(len(text) * (1 - val_fraction))
  return text[:cut], text[cut:], f'local:{text_file}'


def _tfds_corpus(name: str):
  tfds, builder = tfds_source.prepared_builder(name)

  def split_text(split):
    return ''.join(x['text'].decode('utf-8', errors='replace')
                   for x in tfds.as_numpy(builder.as_dataset(split=split)))

  return split_text('train'), split_text('validation'), f'tfds:{name}'


class ByteTokenizer:
  """UTF-8 bytes as token ids 0..255."""
  vocab_size = 256

  @staticmethod
  def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  @staticmethod
  def decode(ids) -> str:
    return bytes(np.asarray(ids, np.uint8).tolist()).decode('utf-8', errors='replace')


def windows(tokens: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping (inputs, targets), each (N, length): targets are inputs shifted by one."""
  n = (len(tokens) - 1) // length
  if n == 0:
    raise DataError(f'{len(tokens)} tokens are fewer than one window of {length + 1}')
  x = tokens[:n * length].reshape(n, length)
  y = tokens[1:n * length + 1].reshape(n, length)
  return x, y


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
  """Entropy (nats per token) of the token frequencies: the loss of a model without context."""
  p = np.bincount(tokens, minlength=vocab_size) / len(tokens)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def clean_text(text: str) -> str:
  """Lowercase; HTML tags and everything but letters, digits and apostrophes become spaces."""
  text = re.sub(r'<[^>]+>', ' ', text.lower())
  return ' '.join(re.sub(r"[^a-z0-9']+", ' ', text).split())


class WordVocabulary:
  """The `max_size` most frequent words of the training texts (seen >= `min_count` times).

  Ids: 0 padding, 1 unknown word, 2 [CLS] (first token of every sequence).
  """

  def __init__(self, texts, max_size: int = 20_000, min_count: int = 2):
    counts = collections.Counter(word for text in texts for word in text.split())
    words = [w for w, c in counts.most_common(max_size - 3) if c >= min_count]
    self.index = {w: i + 3 for i, w in enumerate(words)}

  @property
  def size(self) -> int:
    return len(self.index) + 3

  def encode(self, texts, length: int) -> np.ndarray:
    """(N, length) int32: [CLS] then word ids, truncated or padded with 0."""
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      ids = [CLS] + [self.index.get(w, UNK) for w in text.split()][:length - 1]
      out[row, :len(ids)] = ids
    return out


def load_labelled_texts(directory: str, categories=None) -> tuple[list[str], np.ndarray, tuple]:
  """(texts, labels int32, class names) from one file per class in `directory`.

  Examples are separated by lines holding only '%' (the fortune format) or, in
  files without such lines, one per line. categories: the files to use (all by default).
  """
  names = tuple(categories) if categories else tuple(
      os.path.basename(f) for f in _text_files(directory))
  texts, labels = [], []
  for label, name in enumerate(names):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise DataError(f'no file {name!r} in {directory}: each class is one text file there')
    with open(path, 'rb') as f:
      content = f.read().decode('utf-8', errors='replace')
    parts = re.split(r'^%\s*$', content, flags=re.M) if re.search(r'^%\s*$', content, re.M) \
        else content.splitlines()
    examples = [p.strip() for p in parts if p.strip()]
    texts += examples
    labels += [label] * len(examples)
  if len(set(labels)) < 2:
    raise DataError(f'{directory} gives {len(set(labels))} class(es): a classifier needs two or more')
  return texts, np.asarray(labels, np.int32), names


def split_examples(texts, labels, test_fraction: float, seed: int):
  """A seeded shuffle, then (train_texts, train_labels, test_texts, test_labels)."""
  order = np.random.default_rng(seed).permutation(len(texts))
  cut = int(len(texts) * (1 - test_fraction))
  pick = lambda idx: ([texts[i] for i in idx], labels[idx])
  return (*pick(order[:cut]), *pick(order[cut:]))
