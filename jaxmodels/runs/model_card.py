"""model.json, the card a finished run leaves in its workdir: how to rebuild the model
(task, model name and arguments), how raw inputs become model inputs, the class names,
the result's step and its test metrics."""
import json
import os

from jaxmodels import data as data_lib
from jaxmodels.errors import CheckpointError
from jaxmodels.pretrained import TextTokenizer

MODEL_CARD = 'model.json'


def write_card(workdir: str, card: dict) -> str:
  path = os.path.join(workdir, MODEL_CARD)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(card, f, indent=2)
  return path


def read_card(workdir: str) -> dict:
  """The card of the finished run in `workdir`; CheckpointError if there is none."""
  path = os.path.join(workdir, MODEL_CARD)
  if not os.path.isfile(path):
    raise CheckpointError(f'{workdir} holds no finished run ({MODEL_CARD} is missing): train '
                          'in it first, or pass the workdir of a finished run', key='workdir')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def inputs_from_raw(spec: dict, raw):
  """Raw inputs -> what the model takes, by the card's 'inputs' spec: images (N, H, W, C) in
  0..255 are normalised as in training (`data.to_model_inputs`, jit-able); texts of a
  word-level classifier are cleaned and encoded with the run's vocabulary, or by the
  run's pretrained tokenizer (tokenizer.json, recorded whole in the card); token ids pass
  through."""
  if spec.get('kind') == 'words':
    vocab = data_lib.WordVocabulary.from_words(spec['vocabulary'])
    return vocab.encode([data_lib.clean_text(t) for t in raw], spec['max_length'])
  if spec.get('kind') == 'tokenizer':
    return TextTokenizer.from_spec(spec).encode(raw, spec['max_length'])
  return data_lib.to_model_inputs(spec, raw)
