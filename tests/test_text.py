"""Text pipeline and classifiers: cleaning, vocabularies, byte tokens, corpus windows,
labelled files, and padding that changes nothing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxmodels.data import (ByteTokenizer, WordVocabulary, clean_text, load_labelled_texts,
                            unigram_entropy, windows)
from jaxmodels.models import LSTMClassifier, TransformerClassifier


def test_clean_text():
  assert clean_text('<br />Hello, WORLD!! It\'s  2024...') == "hello world it's 2024"


def test_word_vocabulary_ids():
  vocab = WordVocabulary(['a b b c c c', 'c d'], max_size=10, min_count=2)
  assert vocab.size == 3 + 2  # pad, unk, cls + {c, b}; a and d are rare.
  ids = vocab.encode(['c b a', 'b ' * 10], length=5)
  np.testing.assert_array_equal(ids[0], [2, vocab.index['c'], vocab.index['b'], 1, 0])
  assert ids[1, 0] == 2 and (ids[1, 1:] == vocab.index['b']).all()  # Truncated to 5.


def test_byte_tokenizer_round_trip():
  text = 'naïve café – 日本語\n'
  tokens = ByteTokenizer.encode(text)
  assert tokens.dtype == np.int32 and tokens.max() < 256
  assert ByteTokenizer.decode(tokens) == text


def test_windows_are_shifted_by_one_and_entropy_matches_scipy():
  tokens = np.arange(23) % 7
  x, y = windows(tokens, 5)
  assert x.shape == y.shape == (4, 5)
  np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
  np.testing.assert_array_equal(x.ravel(), tokens[:20])
  assert unigram_entropy(tokens, 7) == pytest.approx(scipy.stats.entropy(np.bincount(tokens)))


def test_labelled_files_in_both_formats(tmp_path):
  (tmp_path / 'jokes').write_text('one\nline\n%\nsecond joke\n%\n')
  (tmp_path / 'facts').write_text('fact one\nfact two\nfact three\n')
  texts, labels, names = load_labelled_texts(str(tmp_path), ['jokes', 'facts'])
  assert names == ('jokes', 'facts')
  assert texts == ['one\nline', 'second joke', 'fact one', 'fact two', 'fact three']
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])


@pytest.mark.parametrize('model', [
    LSTMClassifier(vocab_size=50, num_classes=3, embed_dim=16, hidden=16),
    TransformerClassifier(vocab_size=50, num_classes=3, num_layers=1, embed_dim=16, mlp_dim=32,
                          max_length=20)])
def test_padding_changes_nothing(model):
  tokens = jnp.array([[2, 5, 9, 13, 7, 0, 0, 0], [2, 11, 4, 0, 0, 0, 0, 0]])
  longer = jnp.pad(tokens, ((0, 0), (0, 8)))
  params = model.init(jax.random.PRNGKey(0), tokens)
  a = model.apply(params, tokens)
  b = model.apply(params, longer)
  assert a.shape == (2, 3)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # But the words themselves matter.
  assert not np.allclose(a, model.apply(params, tokens.at[:, 1].set(30)), atol=1e-4)
