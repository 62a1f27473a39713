"""Pretrained tokenizers (tokenizer.json through the `tokenizers` library): WordPiece gives
what the greedy longest-match-first algorithm gives, byte-level BPE round-trips any text,
and both encode to fixed-length id arrays that their input spec rebuilds exactly."""
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

from jaxmodels import DataError
from jaxmodels.pretrained import TextTokenizer

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'the', 'cat', 'sat', 'on', 'mat', 'un', '##aff',
         '##able', '##s', 'a', '##b', '##c', ',', '!', 'b', 'c']


def _wordpiece(path) -> str:
  vocab = {token: i for i, token in enumerate(VOCAB)}
  tokenizer = Tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  tokenizer.save(str(path))
  return str(path)


def _greedy_wordpiece(text: str) -> list[int]:
  """BERT's WordPiece, written out: lowercase, split on spaces and punctuation, then the
  longest vocabulary prefix first, '##' pieces after it; [UNK] for a word that fails."""
  ids = [VOCAB.index('[CLS]')]
  for word in re.findall(r'\w+|[^\w\s]', text.lower()):
    pieces, start = [], 0
    while start < len(word):
      for end in range(len(word), start, -1):
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in VOCAB:
          pieces.append(VOCAB.index(piece))
          start = end
          break
      else:
        pieces = [VOCAB.index('[UNK]')]
        break
    ids += pieces
  return ids + [VOCAB.index('[SEP]')]


def test_wordpiece_is_greedy_longest_match_first(tmp_path):
  tokenizer = TextTokenizer.from_file(_wordpiece(tmp_path / 'tokenizer.json'))
  texts = ['The cat sat on the mat!', 'Unaffable cats, unaffables', 'a b c abc dog']
  ids = tokenizer.encode(texts, 16)
  assert ids.shape == (3, 16) and ids.dtype == np.int32 and tokenizer.pad_id == 0
  for row, text in zip(ids, texts):
    expected = _greedy_wordpiece(text)
    np.testing.assert_array_equal(row, expected + [0] * (16 - len(expected)))
  cut = tokenizer.encode(texts[:1], 4)[0]  # Truncated, the end token kept.
  np.testing.assert_array_equal(cut, [2, VOCAB.index('the'), VOCAB.index('cat'), 3])


def test_byte_level_bpe_round_trips_any_text_and_the_spec_rebuilds_it():
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(['the cat sat on the mat'] * 20 + ['a dog, a log'] * 5,
                                trainers.BpeTrainer(vocab_size=300, special_tokens=['<pad>'],
                                                    initial_alphabet=pre_tokenizers.ByteLevel
                                                    .alphabet()))
  wrapped = TextTokenizer(tokenizer)
  assert wrapped.pad_id == tokenizer.token_to_id('<pad>')
  texts = ['the cat sat', 'naïve café ☕ — ok', 'x' * 50]
  ids = wrapped.encode(texts, 64)
  for row, text in zip(ids, texts):
    assert wrapped.decode(row) == text
  rebuilt = TextTokenizer.from_spec(wrapped.spec(64))
  np.testing.assert_array_equal(rebuilt.encode(texts, 64), ids)
  assert wrapped.spec(64)['kind'] == 'tokenizer'


def test_a_missing_or_broken_tokenizer_is_one_clear_error(tmp_path):
  with pytest.raises(DataError, match='no tokenizer.json'):
    TextTokenizer.from_file(str(tmp_path))
  (tmp_path / 'tokenizer.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(DataError, match='cannot read .* as a tokenizer'):
    TextTokenizer.from_file(str(tmp_path))
