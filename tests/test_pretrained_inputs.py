"""Pretrained models fed as Hugging Face feeds them: BERT with `attention_mask` and
`token_type_ids` gives transformers' outputs (computed here from the fixture directory) even
where the padding id appears inside a real sequence, which pad_id inference gets wrong; ViT
takes the processors' channels-first pixel_values (B, 3, H, W) as well as channels-last
images, with the same logits; a layout that is neither is one clear error."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import InputError
from jaxmodels.data import to_model_inputs
from jaxmodels.models import bert_encoder_of
from jaxmodels.pretrained import load_pretrained

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'hf')
TOLERANCE = 1e-4
VIT_INPUTS = {'kind': 'image', 'mean': [0.5] * 3, 'std': [0.5] * 3}  # ViTImageProcessor's.

# Row 0: a real sentence holding token 0 (the padding id) at position 3; row 1: padded.
TOKENS = np.array([[37, 97, 72, 0, 45, 58, 55, 32, 90, 7],
                   [34, 92, 75, 11, 13, 39, 11, 0, 0, 0]], np.int32)
MASK = np.array([[1] * 10, [1] * 7 + [0] * 3], np.int32)
TYPES = np.array([[0] * 5 + [1] * 5, [0] * 4 + [1] * 6], np.int32)


@pytest.fixture(scope='module')
def hf_bert():
  """transformers' BertForSequenceClassification of the BERT fixture (fp32, eager)."""
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model = transformers.BertForSequenceClassification.from_pretrained(
      os.path.join(FIXTURES, 'bert'), attn_implementation='eager').eval()
  return model


def _hf(model, tokens, mask, types):
  """(logits, last hidden state) of transformers' BERT, as numpy."""
  import torch
  with torch.no_grad():
    kwargs = dict(attention_mask=torch.from_numpy(mask).long(),
                  token_type_ids=torch.from_numpy(types).long())
    logits = model(torch.from_numpy(tokens).long(), **kwargs).logits.numpy()
    hidden = model.bert(torch.from_numpy(tokens).long(), **kwargs).last_hidden_state.numpy()
  return logits, hidden


@pytest.fixture(scope='module')
def bert():
  return load_pretrained(os.path.join(FIXTURES, 'bert'))


def test_bert_attention_mask_gives_transformers_outputs_where_pad_id_inference_cannot(
    hf_bert, bert):
  module, variables = bert
  expected, expected_hidden = _hf(hf_bert, TOKENS, MASK, TYPES)
  with jax.default_matmul_precision('highest'):
    logits = module.apply(variables, TOKENS, attention_mask=MASK, token_type_ids=TYPES)
    hidden, _ = bert_encoder_of(module).apply({'params': variables['params']['bert']}, TOKENS,
                                              attention_mask=MASK, token_type_ids=TYPES)
    inferred = module.apply(variables, TOKENS, token_type_ids=TYPES)  # No mask: pad_id.
  assert np.abs(np.asarray(logits) - expected).max() <= TOLERANCE
  assert np.abs(np.asarray(hidden) - expected_hidden).max() <= TOLERANCE
  # pad_id inference hides row 0's real token 0: wrong there, right on the padded row 1.
  assert np.abs(np.asarray(inferred[0]) - expected[0]).max() > 100 * TOLERANCE
  assert np.abs(np.asarray(inferred[1]) - expected[1]).max() <= TOLERANCE


def test_bert_token_type_ids_change_the_output_as_transformers(hf_bert, bert):
  module, variables = bert
  zeros, ones = np.zeros_like(TYPES), np.ones_like(TYPES)
  hf_zeros, _ = _hf(hf_bert, TOKENS, MASK, zeros)
  hf_ones, _ = _hf(hf_bert, TOKENS, MASK, ones)
  assert np.abs(hf_ones - hf_zeros).max() > 100 * TOLERANCE  # The segments matter here.
  with jax.default_matmul_precision('highest'):
    ours_ones = module.apply(variables, TOKENS, attention_mask=MASK, token_type_ids=ones)
    ours_default = module.apply(variables, TOKENS, attention_mask=MASK)  # One segment.
  assert np.abs(np.asarray(ours_ones) - hf_ones).max() <= TOLERANCE
  assert np.abs(np.asarray(ours_default) - hf_zeros).max() <= TOLERANCE


def test_a_bert_mask_or_segments_of_another_shape_are_one_clear_error(bert):
  module, variables = bert
  with pytest.raises(InputError, match=r'attention_mask \(2, 9\) .* tokens \(2, 10\)') as error:
    module.apply(variables, TOKENS, attention_mask=MASK[:, :9])
  assert '\n' not in str(error.value)
  with pytest.raises(InputError, match=r'token_type_ids \(1, 10\) .* tokens \(2, 10\)'):
    module.apply(variables, TOKENS, token_type_ids=TYPES[:1])
  with pytest.raises(InputError, match='token_types or token_type_ids'):
    module.apply(variables, TOKENS, token_types=TYPES, token_type_ids=TYPES)


def test_vit_takes_channels_first_pixel_values_as_transformers_processors_give_them():
  directory = os.path.join(FIXTURES, 'vit')
  reference = dict(np.load(os.path.join(directory, 'reference.npz')))
  module, variables = load_pretrained(directory)
  channels_last = to_model_inputs(VIT_INPUTS, reference['images'])      # (2, 16, 16, 3)
  pixel_values = jnp.transpose(channels_last, (0, 3, 1, 2))             # (2, 3, 16, 16)
  with jax.default_matmul_precision('highest'):
    last = np.asarray(module.apply(variables, channels_last))
    first = np.asarray(module.apply(variables, pixel_values))
  assert np.abs(first - last).max() <= 1e-6
  assert np.abs(first - reference['logits']).max() <= TOLERANCE  # transformers' own.


def test_a_vit_image_in_neither_layout_is_one_clear_error():
  module, variables = load_pretrained(os.path.join(FIXTURES, 'vit'))
  for images in (jnp.zeros((2, 16, 16, 4)), jnp.zeros((2, 16, 16))):
    with pytest.raises(InputError, match=r'ViT takes images \(B, H, W, 3\) or \(B, 3, H, W\)'
                       ) as error:
      module.apply(variables, images)
    assert '\n' not in str(error.value)
