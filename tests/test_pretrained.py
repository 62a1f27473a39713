"""Pretrained weights: jaxmodels' GPT-2, BERT and ViT loaded from Hugging Face directories
give transformers' logits (the committed fixtures of tests/fixtures/hf/generate.py, made
with the PyTorch classes); a wrong epsilon or GELU would fail the same check; the loaded
GPT-2 decodes with its KV cache as a full forward pass does; bad checkpoints get one line."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxmodels import CheckpointError
from jaxmodels.data import to_model_inputs
from jaxmodels.models import bert_encoder_of
from jaxmodels.pretrained import load_params, load_pretrained, resize_grid
from jaxmodels.pretrained.resize import bicubic_matrix

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'hf')
TOLERANCE = 1e-4
VIT_INPUTS = {'kind': 'image', 'mean': [0.5] * 3, 'std': [0.5] * 3}  # ViTImageProcessor's.


def _reference(name):
  return os.path.join(FIXTURES, name), dict(np.load(os.path.join(FIXTURES, name,
                                                                 'reference.npz')))


def _outputs(name, directory=None, **overrides):
  """(logits, attention weights of layer 0, reference, variables) of the loaded model."""
  default, ref = _reference(name)
  directory = directory or default
  images = jnp.zeros((1, 16, 16, 3)) if name == 'vit' else None
  module, variables = load_pretrained(directory, example=images, attention='explicit',
                                      **overrides)
  if name == 'vit':
    inputs, kwargs = to_model_inputs(VIT_INPUTS, ref['images']), {}
  else:
    inputs, kwargs = ref['tokens'], ({'token_types': ref['token_types']} if name == 'bert'
                                     else {})
  with jax.default_matmul_precision('highest'):
    logits, sown = module.apply(variables, inputs, mutable=['intermediates'], **kwargs)
  attention = jax.tree.leaves(sown)[0]
  return np.asarray(logits), np.asarray(attention), ref, variables


@pytest.mark.parametrize('name', ['gpt2', 'bert', 'vit'])
def test_logits_and_attention_match_transformers(name):
  logits, attention, ref, _ = _outputs(name)
  assert np.abs(logits - ref['logits']).max() <= TOLERANCE
  assert np.abs(attention - ref['attention0']).max() <= TOLERANCE


@pytest.mark.parametrize('name, wrong', [
    ('gpt2', {'activation': 'gelu_erf'}),   # GPT-2 uses the tanh approximation.
    ('gpt2', {'norm_epsilon': 1e-6}),
    ('bert', {'activation': 'gelu_tanh'}),  # BERT and ViT use the exact GELU,
    ('bert', {'norm_epsilon': 1e-6}),       # and epsilon 1e-12.
    ('vit', {'activation': 'gelu_tanh'}),
    ('vit', {'norm_epsilon': 1e-6}),
])
def test_the_check_fails_with_a_wrong_epsilon_or_gelu(name, wrong):
  logits, _, ref, _ = _outputs(name, **wrong)
  assert np.abs(logits - ref['logits']).max() > TOLERANCE


def test_bert_hidden_states_and_pooled_output_match():
  directory, ref = _reference('bert')
  module, variables = load_pretrained(directory)
  encoder = bert_encoder_of(module)
  with jax.default_matmul_precision('highest'):
    hidden, pooled = encoder.apply({'params': variables['params']['bert']}, ref['tokens'],
                                   ref['token_types'])
  assert np.abs(hidden - ref['hidden']).max() <= TOLERANCE
  assert np.abs(pooled - ref['pooled']).max() <= TOLERANCE


def test_vit_at_another_image_size_resizes_its_positions_as_transformers():
  """24x24 images (6x6 patches) on a checkpoint of 16x16 (4x4): the position grid is
  resized bicubically, as transformers' interpolate_pos_encoding does."""
  directory, ref = _reference('vit')
  module, variables = load_pretrained(directory, example=jnp.zeros((1, 24, 24, 3)))
  assert variables['params']['position_embedding'].shape == (1, 37, 32)
  with jax.default_matmul_precision('highest'):
    logits = module.apply(variables, to_model_inputs(VIT_INPUTS, ref['larger_images']))
  assert np.abs(logits - ref['larger_logits']).max() <= TOLERANCE


def test_bicubic_resize_keeps_a_grid_of_the_same_size_and_constants():
  np.testing.assert_allclose(bicubic_matrix(5, 5), np.eye(5), atol=1e-12)
  np.testing.assert_allclose(bicubic_matrix(4, 7).sum(1), 1.0, atol=1e-12)  # Constants stay.
  table = np.random.default_rng(0).normal(size=(1, 1 + 16, 3)).astype(np.float32)
  out = resize_grid(table, 1 + 36)
  assert out.shape == (1, 37, 3) and np.array_equal(out[:, 0], table[:, 0])  # [CLS] as is.
  with pytest.raises(ValueError, match='square grid'):
    resize_grid(table, 1 + 35)


def test_loaded_gpt2_decodes_with_its_kv_cache_as_a_full_forward_pass():
  from jaxmodels.models import generate
  directory, ref = _reference('gpt2')
  module, variables = load_pretrained(directory, dropout=0.0)
  prompt = jnp.asarray(ref['tokens'][:, :5])
  with jax.default_matmul_precision('highest'):
    tokens = generate(module, variables['params'], prompt, jax.random.PRNGKey(0),
                      max_new_tokens=10, temperature=0.0)
    full = module.apply(variables, tokens)
  # Greedy decoding picked, at each step, the argmax of the full pass's logits there.
  np.testing.assert_array_equal(np.asarray(tokens[:, 5:]), np.asarray(full[:, 4:-1].argmax(-1)))
  decoder = module.clone(decode=True)
  cache = jax.tree.map(jnp.zeros_like, jax.eval_shape(decoder.init, jax.random.PRNGKey(0),
                                                      tokens[:, :1])['cache'])
  state, pieces = {'cache': cache}, []
  with jax.default_matmul_precision('highest'):
    for t in range(tokens.shape[1]):
      logits, state = decoder.apply({**variables, **state}, tokens[:, t:t + 1], mutable=['cache'])
      pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=TOLERANCE)


def _copy(tmp_path, name):
  target = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), target)
  return target


def test_sharded_checkpoints_load_as_the_single_file(tmp_path):
  target = _copy(tmp_path, 'bert')
  tensors = load_file(target / 'model.safetensors')
  os.remove(target / 'model.safetensors')
  names = sorted(tensors)
  shards = {'model-00001-of-00002.safetensors': names[::2],
            'model-00002-of-00002.safetensors': names[1::2]}
  for file, part in shards.items():
    save_file({k: tensors[k] for k in part}, target / file)
  (target / 'model.safetensors.index.json').write_text(json.dumps(
      {'metadata': {}, 'weight_map': {k: f for f, part in shards.items() for k in part}}))
  _, variables = load_pretrained(str(target))
  _, expected = load_pretrained(os.path.join(FIXTURES, 'bert'))
  jax.tree.map(np.testing.assert_array_equal, variables, expected)


def test_a_missing_tensor_is_one_clear_error(tmp_path):
  target = _copy(tmp_path, 'bert')
  tensors = load_file(target / 'model.safetensors')
  del tensors['bert.encoder.layer.1.intermediate.dense.weight']
  save_file(tensors, target / 'model.safetensors')
  with pytest.raises(CheckpointError, match='no tensor for param '
                     'bert/encoder/layer1/mlp/Dense_0/kernel'):
    load_pretrained(str(target))


def test_a_shape_that_does_not_fit_the_model_is_one_clear_error():
  directory, _ = _reference('gpt2')
  shapes = {'embed/embedding': (97, 32), 'position_embedding': (32, 32)}
  with pytest.raises(CheckpointError, match=r'wte\.weight has shape \(96, 32\), expected '
                     r'\(97, 32\) for param embed/embedding: the model options'):
    load_params(directory, shapes)


def test_an_unsupported_architecture_is_one_clear_error(tmp_path):
  target = _copy(tmp_path, 'gpt2')
  config = json.loads((target / 'config.json').read_text())
  (target / 'config.json').write_text(json.dumps({**config, 'model_type': 'llama'}))
  with pytest.raises(CheckpointError, match="holds a 'llama' model.*loads bert, gpt2, vit"):
    load_pretrained(str(target))
  with pytest.raises(CheckpointError, match='has no config.json'):
    load_pretrained(str(tmp_path))


def _gpt2_directory(tmp_path, embed: int, transposed: bool = False):
  """A random one-layer GPT-2 of width `embed` (Conv1D layouts, (in, out)); its c_attn.weight
  stored transposed, (3E, E), if `transposed`: the same element count as (E, 3E)."""
  rng = np.random.default_rng(0)
  config = json.loads(open(os.path.join(FIXTURES, 'gpt2', 'config.json')).read())
  config.update(n_embd=embed, n_layer=1)
  shapes = {'wte.weight': (96, embed), 'wpe.weight': (32, embed),
            'h.0.attn.c_attn.weight': (embed, 3 * embed), 'h.0.attn.c_attn.bias': (3 * embed,),
            'h.0.attn.c_proj.weight': (embed, embed), 'h.0.attn.c_proj.bias': (embed,),
            'h.0.mlp.c_fc.weight': (embed, 4 * embed), 'h.0.mlp.c_fc.bias': (4 * embed,),
            'h.0.mlp.c_proj.weight': (4 * embed, embed), 'h.0.mlp.c_proj.bias': (embed,),
            **{f'{norm}.{part}': (embed,) for norm in ('h.0.ln_1', 'h.0.ln_2', 'ln_f')
               for part in ('weight', 'bias')}}
  tensors = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
  if transposed:
    tensors['h.0.attn.c_attn.weight'] = np.ascontiguousarray(tensors['h.0.attn.c_attn.weight'].T)
  target = tmp_path / f'gpt2_{embed}{"_transposed" if transposed else ""}'
  target.mkdir()
  (target / 'config.json').write_text(json.dumps(config))
  save_file(tensors, target / 'model.safetensors')
  return str(target)


@pytest.mark.parametrize('embed', [32, 48])  # 48: 3E splits into three (3E, E/3) evenly.
def test_a_transposed_tensor_of_the_right_size_is_one_clear_error(tmp_path, embed):
  """GPT-2's c_attn.weight stored (out, in) = (3E, E) instead of Conv1D's (in, out): the
  element count fits the three (E, H, D) kernels, the shape does not."""
  load_pretrained(_gpt2_directory(tmp_path, embed))  # The right layout loads.
  directory = _gpt2_directory(tmp_path, embed, transposed=True)
  with pytest.raises(CheckpointError, match=rf'tensor h\.0\.attn\.c_attn\.weight has shape '
                     rf'\({3 * embed}, {embed}\), expected \({embed}, {3 * embed}\)') as error:
    load_pretrained(directory)
  assert '\n' not in str(error.value) and 'transposed' in str(error.value)


def _bert_without_head(tmp_path):
  """The BERT fixture as a BertModel saves it: no classifier, names without 'bert.'."""
  target = _copy(tmp_path, 'bert')
  tensors = load_file(target / 'model.safetensors')
  save_file({name.removeprefix('bert.'): array for name, array in tensors.items()
             if not name.startswith('classifier.')}, target / 'model.safetensors')
  config = json.loads((target / 'config.json').read_text())
  (target / 'config.json').write_text(json.dumps({**config, 'architectures': ['BertModel']}))
  return target


HEAD_NOTE = 'not in the checkpoint, left at their fresh init: classifier/bias, classifier/kernel'


def test_load_pretrained_says_which_params_keep_their_fresh_init(tmp_path, capsys):
  target = _bert_without_head(tmp_path)
  _, variables = load_pretrained(str(target))
  said = capsys.readouterr().out.splitlines()
  assert said == [f'{target}: {HEAD_NOTE}']
  _, _, notes = load_pretrained(str(target), with_notes=True)
  assert notes == [HEAD_NOTE]
  _, expected = load_pretrained(os.path.join(FIXTURES, 'bert'))
  jax.tree.map(np.testing.assert_array_equal, variables['params']['bert'],
               expected['params']['bert'])


@pytest.mark.slow  # A whole fine-tuning run: 20 s.
def test_a_run_from_a_checkpoint_without_its_head_says_so_and_records_it(tmp_path, capsys):
  """init_from=hf:DIR of a BertModel (no classifier): the run prints the note once and its
  summary.json records it under init_from_notes."""
  from tokenizers import Tokenizer, models, pre_tokenizers

  from jaxmodels.cli import default_extensions
  from jaxmodels.tasks import runner, text_classification
  target = _bert_without_head(tmp_path)
  words = [f'w{i}' for i in range(96)]
  tokenizer = Tokenizer(models.WordLevel(
      {word: i for i, word in enumerate(['[PAD]', '[UNK]', '[CLS]', '[SEP]', *words])},
      unk_token='[UNK]'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(tmp_path / 'tokenizer.json'))
  texts = tmp_path / 'texts'
  texts.mkdir()
  rng = np.random.default_rng(0)
  for label in range(3):
    (texts / f'class{label}').write_text('\n'.join(
        ' '.join(rng.choice(words[label * 32:(label + 1) * 32], 6)) for _ in range(12)))
  extensions = default_extensions()
  config = runner.default_config(text_classification.TASK, extensions)
  config.model = dict(name='bert_classifier', max_positions=40, embed_dim=32, num_layers=2,
                      num_heads=4, mlp_dim=64, dropout=0.0)
  config.data.update(source='local', local_dir=str(texts), categories=(), max_length=12,
                     tokenizer=str(tmp_path / 'tokenizer.json'))
  config.train.update(num_steps=2, batch_size=8, eval_batch_size=64, log_every_steps=1,
                      steps_per_dispatch=1, progress=False)
  config.init_from = f'hf:{target}'
  capsys.readouterr()
  runner.run(text_classification.TASK, config, str(tmp_path / 'run'), extensions=extensions)
  printed = capsys.readouterr().out.splitlines()
  assert printed.count(f'init_from: {HEAD_NOTE}') == 1
  summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
  assert summary['init_from_notes'] == [HEAD_NOTE]
