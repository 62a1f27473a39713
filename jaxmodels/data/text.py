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
from jaxmodels.errors import DataError, DataUnavailableError

# Debian's `fortunes` package: ~2.5 MB of English text in files named by category.
FORTUNES_DIR = '/usr/share/games/fortunes'
PAD, UNK, CLS = 0, 1, 2  # Word ids reserved by `WordVocabulary`.


def _text_files(directory: str) -> list[str]:
  """The regular files of a directory (fortune directories also hold .dat indexes and .u8
  copies, which are left out)."""
  if not os.path.isdir(directory):
    raise DataError(f'{directory!r} is not a directory: pass a directory of text files')
  files = [os.path.join(directory, f) for f in sorted(os.listdir(directory))
           if os.path.isfile(os.path.join(directory, f)) and not f.endswith(('.dat', '.u8'))]
  if not files:
    raise DataError(f'{directory!r} holds no files: pass a directory of text files')
  return files


def _decode(path: str, raw: bytes) -> str:
  """UTF-8 text with the odd bad byte replaced; DataError for what is not text at all."""
  text = raw.decode('utf-8', errors='replace')
  bad = text.count('\ufffd')
  if b'\0' in raw or bad > 0.01 * max(len(text), 1):
    why = 'it has NUL bytes' if b'\0' in raw else f'{bad} of {len(text)} characters are not UTF-8'
    raise DataError(f'{path} does not look like text ({why}): pass a text file')
  return text


def read_text(path: str) -> str:
  """The text of a file (UTF-8; the odd bad byte is replaced). DataError for a directory,
  a missing file or a binary one."""
  if os.path.isdir(path):
    raise DataError(f'{path!r} is a directory: pass a text file, or read_text_dir for a '
                    'directory of text files')
  if not os.path.isfile(path):
    raise DataError(f'no text file at {path!r}: pass a text file')
  with open(path, 'rb') as f:
    return _decode(path, f.read())


def read_text_dir(directory: str) -> str:
  """Every file of `directory` (not its subdirectories) joined by newlines; each must be text."""
  return '\n'.join(read_text(f) for f in _text_files(directory))


def load_corpus(text_file: str = '', text_dir: str = '', tfds_name: str = 'tiny_shakespeare',
                holdout: float = 0.1) -> tuple[str, str, str, str]:
  """(train, validation, test texts, source) for language modelling.

  text_file (one file) or text_dir (a directory of text files) wins; else tfds
  `tfds_name` ('train', 'validation' and 'test' splits); offline without it,
  Debian's fortunes. A local text ends in a validation and then a test part,
  each `holdout` of its length.
  """
  if text_file and text_dir:
    raise DataError('pass text_file or text_dir, not both')
  if not (text_file or text_dir):
    try:
      return _tfds_corpus(tfds_name)
    except DataUnavailableError:
      if not os.path.isdir(FORTUNES_DIR):
        raise DataUnavailableError(
            f'cannot download {tfds_name!r} from tfds (no network) and no local text: pass '
            'text_file=FILE or text_dir=DIR (or apt-get install fortunes)') from None
      text_dir = FORTUNES_DIR
  text = read_text(text_file) if text_file else read_text_dir(text_dir)
  if len(text) < 1000:
    raise DataError(f'{text_file or text_dir} holds {len(text)} characters: a language model '
                    'needs more')
  val_start, test_start = (int(len(text) * (1 - k * holdout)) for k in (2, 1))
  return (text[:val_start], text[val_start:test_start], text[test_start:],
          f'local:{text_file or text_dir}')


def _tfds_corpus(name: str):
  tfds, builder = tfds_source.prepared_builder(name)

  def split_text(split):
    return ''.join(x['text'].decode('utf-8', errors='replace')
                   for x in tfds.as_numpy(builder.as_dataset(split=split)))

  return split_text('train'), split_text('validation'), split_text('test'), f'tfds:{name}'


def load_tfds_texts(name: str):
  """(train texts, train labels, test texts, test labels, class names) of a tfds dataset with
  'text' and 'label' features, e.g. imdb_reviews."""
  tfds, builder = tfds_source.prepared_builder(name)
  features = builder.info.features
  if 'text' not in features or 'label' not in features:
    raise DataError(f"tfds dataset {name!r} has no 'text' and 'label' features")

  def read(split):
    texts, labels = [], []
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      texts.append(example['text'].decode('utf-8', errors='replace'))
      labels.append(int(example['label']))
    return texts, np.asarray(labels, np.int32)

  label = features['label']
  names = tuple(getattr(label, 'names', None) or (str(i) for i in range(label.num_classes)))
  return (*read('train'), *read('test'), names)


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

  @classmethod
  def from_words(cls, words) -> 'WordVocabulary':
    """The vocabulary whose `words` these are (ids 3, 4, ... in this order)."""
    vocab = cls([])
    vocab.index = {w: i + 3 for i, w in enumerate(words)}
    return vocab

  @property
  def words(self) -> list[str]:
    """The known words in id order (ids 3, 4, ...): enough to rebuild the vocabulary."""
    return sorted(self.index, key=self.index.get)

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
    content = read_text(path)
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
