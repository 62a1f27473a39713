"""How the text task turns texts into fixed-length token ids: a word vocabulary built from
the training texts (cleaned: lowercase words), or a pretrained model's tokenizer
(data.tokenizer: its tokenizer.json, run on the texts as they are)."""
from jaxmodels import data as data_lib
from jaxmodels.pretrained import TextTokenizer


class TextEncoder:
  """encode(texts) -> (N, length) int32. info: vocab_size, pad_id and input_spec (model.json's
  inputs, from which `TrainedRun.model_inputs` encodes new texts the same way)."""

  def __init__(self, config, train_texts):
    cfg, self.length = config.data, config.data.max_length
    if cfg.tokenizer:
      self.tokenizer = TextTokenizer.from_file(cfg.tokenizer)
      self.vocab = None
      self.info = {'vocab_size': self.tokenizer.vocab_size, 'pad_id': self.tokenizer.pad_id,
                   'input_spec': self.tokenizer.spec(self.length)}
      self.description = (f'tokenizer {cfg.tokenizer} ({self.tokenizer.vocab_size} tokens) on '
                          f'{len(train_texts)} texts')
    else:
      self.vocab = data_lib.WordVocabulary(self._clean(train_texts), cfg.vocab_size,
                                           cfg.min_count)
      self.info = {'vocab_size': self.vocab.size, 'pad_id': data_lib.text.PAD,
                   'words': self.vocab.words,
                   'input_spec': {'kind': 'words', 'vocabulary': self.vocab.words,
                                  'max_length': self.length}}
      self.description = f'word vocabulary of {self.vocab.size} from {len(train_texts)} texts'

  @staticmethod
  def _clean(texts):
    return [data_lib.clean_text(t) for t in texts]

  def encode(self, texts):
    if self.vocab is None:
      return self.tokenizer.encode(texts, self.length)
    return self.vocab.encode(self._clean(texts), self.length)
