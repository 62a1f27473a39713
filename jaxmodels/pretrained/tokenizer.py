"""Tokenizers of pretrained models: a `tokenizer.json` (WordPiece for BERT, byte-level BPE
for GPT-2, ...) run by Hugging Face's `tokenizers` library, giving fixed-length id arrays.

    tokenizer = TextTokenizer.from_file('path/to/model')     # its tokenizer.json
    ids = tokenizer.encode(['A text.', 'Another one.'], 64)   # (2, 64) int32, 0-padded

Its input spec (`spec`, recorded in model.json) holds the whole tokenizer, so a trained
run rebuilds it without the original files.
"""
import json
import os

import numpy as np

from jaxmodels.errors import DataError

FILE = 'tokenizer.json'
_PAD_TOKENS = ('[PAD]', '<pad>', '<|endoftext|>')


class TextTokenizer:
  """A `tokenizers.Tokenizer` with fixed-length batch encoding. pad_id: the padding token
  (the tokenizer's own padding setting, else [PAD] / <pad> / <|endoftext|>, else 0)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    padding = tokenizer.padding or {}
    self.pad_id = padding.get('pad_id', next(
        (i for i in map(tokenizer.token_to_id, _PAD_TOKENS) if i is not None), 0))

  @classmethod
  def from_file(cls, path: str) -> 'TextTokenizer':
    """From a tokenizer.json, or a model directory holding one; DataError if unreadable."""
    from tokenizers import Tokenizer  # Imported on first use.
    file = os.path.join(path, FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise DataError(f'no {FILE} at {path!r}: pass a tokenizer.json or a model directory '
                      'holding one')
    try:
      return cls(Tokenizer.from_file(file))
    except Exception as e:  # The library's own error types: anything here is bad input.
      raise DataError(f'cannot read {file} as a tokenizer: {str(e)[:200]}') from None

  @classmethod
  def from_spec(cls, spec: dict) -> 'TextTokenizer':
    """From an input spec written by `spec`."""
    from tokenizers import Tokenizer
    return cls(Tokenizer.from_str(json.dumps(spec['tokenizer'])))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, texts, length: int) -> np.ndarray:
    """(N, length) int32: each text's ids with the tokenizer's special tokens ([CLS] ...
    [SEP] for BERT), cut to `length` (the end token kept) or padded with pad_id."""
    tokenizer = self.tokenizer
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=self.pad_id,
                             pad_token=tokenizer.id_to_token(self.pad_id) or '[PAD]')
    encoded = tokenizer.encode_batch(list(texts))
    out = np.full((len(encoded), length), self.pad_id, np.int32)
    for row, item in enumerate(encoded):
      out[row, :len(item.ids)] = item.ids[:length]
    return out

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids if int(i) != self.pad_id])

  def spec(self, length: int) -> dict:
    """The input spec of a model fed by this tokenizer (JSON; see TrainedRun.model_inputs)."""
    return {'kind': 'tokenizer', 'max_length': length, 'pad_id': self.pad_id,
            'tokenizer': json.loads(self.tokenizer.to_str())}
