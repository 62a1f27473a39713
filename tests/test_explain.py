"""Explanations checked against independent computations: PAIR's `saliency` package (vanilla
gradients, integrated gradients, SmoothGrad, Grad-CAM), the completeness of integrated
gradients, a numpy attention rollout, the fused attention path, and the model-randomisation
sanity check (Adebayo et al. 2018): a trained model's maps are not a random model's."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import saliency.core as pair
import scipy.stats

import jaxmodels as jm
from jaxmodels import explain, models
from jaxmodels.explain.layer_outputs import layer_outputs
from jaxmodels.cli import default_extensions

EXTENSIONS = default_extensions()  # What the experiments apply.

GRADIENTS = pair.base.INPUT_OUTPUT_GRADIENTS


@pytest.fixture(scope='module')
def quadrants():
  """A SmallCNN trained (60 Adam steps) to tell which quadrant of a noisy 8x8 image holds a
  bright square, and the same CNN with fresh random weights. Raw pixels 0..255."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 256)
  images = rng.uniform(0, 100, (256, 8, 8, 1)).astype(np.float32)
  quadrant = np.zeros((256, 8, 8), bool)
  for i, k in enumerate(labels):
    r, c = 4 * (k // 2), 4 * (k % 2)
    images[i, r + 1:r + 4, c + 1:c + 4] = 255
    quadrant[i, r:r + 4, c:c + 4] = True
  module = models.MODELS['small_cnn'](num_classes=4)
  model = jm.linen_model(module)
  tx = jm.make_optimizer('adam', 3e-3)
  state = jm.create_train_state(model, tx, jax.random.PRNGKey(0), images[:1])
  step = jm.make_train_step(model.apply, jm.classification_loss(), tx,
                            jm.classification_metrics(4))
  state, history = jm.fit(state, step, (images / 255.0, labels), batch_size=32, num_steps=60,
                          progress=False, log_every_steps=60)
  assert history.train[-1]['accuracy'] > 0.9
  randomised = module.init(jax.random.PRNGKey(1), images[:1])
  return module, {'params': state.params}, randomised, images, labels, quadrant


@pytest.fixture(scope='module')
def cnn(quadrants):
  """The trained quadrant CNN, three of its raw images (0..255) and their classes: what the
  comparisons with the package share."""
  module, variables, _, images, labels, _ = quadrants
  fn = lambda x: module.apply(variables, x / 255.0)
  return module, variables, fn, images[:3], jnp.asarray(labels[:3])


def _pair_model(fn, target):
  """A `call_model_function` for the saliency package: its own vmap(grad) of the score."""
  grad = jax.vmap(jax.grad(lambda x: fn(x[None])[0, target]))

  def call(batch, call_model_args=None, expected_keys=None):
    return {GRADIENTS: np.asarray(grad(jnp.asarray(batch, jnp.float32)))}
  return call


def test_integrated_gradients_are_complete_at_256_steps(quadrants):
  """sum IG = f(x) - f(x') within 1e-3 |f(x) - f(x')| at 256 steps (the default rule), from
  a black and from a grey baseline, on the trained ReLU CNN. (Its gradient is piecewise
  constant along the path, so the rule's error is about (jumps at the kinks) / steps: an
  untrained CNN, whose f(x) - f(x') is ~0.1, misses 1e-3; the trained one's is ~8.)"""
  module, trained, _, images, labels, _ = quadrants
  fn = lambda x: module.apply(trained, x / 255.0)
  x = np.concatenate([images[:6], images[:6]])
  baselines = np.concatenate([np.zeros_like(x[:6]), np.full_like(x[:6], 50.0)])
  targets = jnp.asarray(np.concatenate([labels[:6], labels[:6]]))

  @jax.jit
  def gaps(x, baselines):
    ig = explain.integrated_gradients(fn, x, targets, baselines, steps=256)
    rows = jnp.arange(len(x))
    delta = fn(x)[rows, targets] - fn(baselines)[rows, targets]
    return jnp.abs(ig.sum((1, 2, 3)) - delta) / jnp.abs(delta), delta

  relative, delta = gaps(x, baselines)
  assert np.all(np.abs(delta) > 1), delta  # A trained model: far from the baseline.
  assert np.all(relative <= 1e-3), relative


def test_integrated_gradients_equal_the_saliency_package(cnn):
  """With the package's rule (uniform weights on linspace(0, 1, steps)), the same steps."""
  _, _, fn, images, targets = cnn
  ours = explain.integrated_gradients(fn, images, targets, steps=256, rule='uniform',
                                      batch_size=64)
  for i, target in enumerate(np.asarray(targets)):
    expected = pair.IntegratedGradients().GetMask(images[i], _pair_model(fn, target),
                                                  x_steps=256, batch_size=32)
    np.testing.assert_allclose(ours[i], expected, atol=1e-5, rtol=1e-5)


def test_gradients_and_smoothgrad_equal_the_saliency_package(cnn, monkeypatch):
  """SmoothGrad with the package drawing the same noise as ours (np.random.normal patched)."""
  _, _, fn, images, targets = cnn
  vanilla = explain.input_gradients(fn, images, targets, batch_size=2)
  rng = jax.random.PRNGKey(7)
  smooth = explain.smoothgrad(fn, images, targets, rng, samples=6, noise=0.2, batch_size=4)
  for i, (key, target) in enumerate(zip(jax.random.split(rng, len(images)), np.asarray(targets))):
    call = _pair_model(fn, target)
    np.testing.assert_allclose(vanilla[i], pair.GradientSaliency().GetMask(images[i], call),
                               atol=1e-6, rtol=1e-5)
    draws = iter(np.asarray(jax.random.normal(key, (6, *images[i].shape))))
    monkeypatch.setattr(np.random, 'normal', lambda mean, scale, shape, draws=draws: scale * next(draws))
    expected = pair.GradientSaliency().GetSmoothedMask(images[i], call, stdev_spread=0.2,
                                                       nsamples=6, magnitude=True)
    np.testing.assert_allclose(smooth[i], expected, rtol=2e-4, atol=1e-9)


def test_grad_cam_equals_the_saliency_package_on_a_hand_split_cnn(cnn):
  """The package gets the conv layer's values and gradients from a SmallCNN written out by
  hand (conv, then max-pool, ReLU and the dense head), not through method interception."""
  module, variables, fn, images, targets = cnn
  p = variables['params']
  conv = lambda x: nn.Conv(32, (3, 3), padding='VALID').apply({'params': p['Conv_0']}, x / 255.0)

  def head(features):
    h = jax.nn.relu(jax.lax.reduce_window(features, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                          (1, 2, 2, 1), 'VALID'))
    h = jax.nn.relu(h.reshape(len(h), -1) @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])
    return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']

  np.testing.assert_allclose(head(conv(images)), fn(images), atol=1e-5)  # The split is exact.
  ours = explain.grad_cam(module, variables, images / 255.0, targets)
  assert explain.last_feature_map(module, variables, images[:1]) == 'Conv_0'
  for i, target in enumerate(np.asarray(targets)):
    def call(batch, call_model_args=None, expected_keys=None, target=target):
      features = conv(jnp.asarray(batch))
      grads = jax.grad(lambda f: head(f)[:, target].sum())(features)
      return {pair.base.CONVOLUTION_LAYER_VALUES: np.asarray(features),
              pair.base.CONVOLUTION_OUTPUT_GRADIENTS: np.asarray(grads)}
    expected = pair.GradCam().GetMask(images[i], call, should_resize=False, three_dims=False)
    np.testing.assert_allclose(ours[i], expected, atol=1e-5, rtol=1e-4)
    assert ours[i].max() > 0


@pytest.mark.slow  # A second CNN to compile: kept out of the default run.
def test_grad_cam_picks_the_last_spatial_stage_of_a_deeper_cnn():
  module = models.MODELS['convnet'](num_classes=3, widths=(4, 8))
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  calls = layer_outputs(module, variables, jnp.zeros((1, 16, 16, 1)))
  assert [path for path, _, _ in calls][-3:] == ['stage1', 'Dropout_0', 'Dense_0']
  assert explain.last_feature_map(module, variables, jnp.zeros((1, 16, 16, 1))) == 'stage1'
  maps = explain.grad_cam(module, variables, jnp.ones((2, 16, 16, 1)), jnp.array([0, 1]))
  assert maps.shape == (2, 4, 4) and np.all(np.asarray(maps) >= 0)


def _numpy_rollout(weights, residual=True):
  layers = weights.mean(axis=2)  # (L, B, T, S)
  out = []
  for b in range(weights.shape[1]):
    rollout = np.eye(weights.shape[-1])
    for a in layers[:, b]:
      if residual:
        a = 0.5 * a + 0.5 * np.eye(len(a))
        a = a / a.sum(-1, keepdims=True)
      rollout = a @ rollout
    out.append(rollout)
  return np.stack(out)


def test_attention_rollout_equals_a_numpy_rollout():
  weights = np.random.default_rng(0).uniform(size=(3, 2, 4, 6, 6))
  weights /= weights.sum(-1, keepdims=True)
  for residual in (True, False):
    np.testing.assert_allclose(explain.attention_rollout(weights, residual=residual),
                               _numpy_rollout(weights, residual), rtol=1e-5, atol=1e-6)


def _random_variables(module, *inputs, scale=0.3):
  """Variables of `module`'s shapes drawn from N(0, scale^2) with numpy: no init program to
  compile (for tests that compare two paths of the same model, any weights do)."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype),
                      shapes)


def test_vit_attention_path_equals_the_fused_path_in_layer_order():
  """ViT's explicit path gives the fused logits to 1e-5; its weights come in layer order
  (12 listed layers, so 'layer10' must follow 'layer9'), the same as the scanned stack's."""
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1))
  kwargs = dict(num_classes=3, patch_size=4, num_layers=12, num_heads=2, embed_dim=8,
                mlp_dim=16, dropout=0.0)
  listed, scanned = models.ViT(**kwargs), models.ViT(**kwargs, scan_layers=True)
  params = _random_variables(listed, images)['params']
  fused = listed.apply({'params': params}, images)
  explicit = listed.clone(attention='explicit').apply({'params': params}, images)
  np.testing.assert_allclose(explicit, fused, atol=1e-5, rtol=1e-5)
  stacked = {**params, 'encoder': {
      'layers': jax.tree.map(lambda *a: jnp.stack(a),
                             *[params['encoder'][f'layer{i}'] for i in range(12)]),
      'final_norm': params['encoder']['final_norm']}}
  weights = explain.attention_weights(listed, {'params': params}, images)
  assert weights.shape == (12, 2, 2, 5, 5)
  np.testing.assert_allclose(explain.attention_weights(scanned, {'params': stacked}, images),
                             weights, atol=1e-6)
  heat, _ = explain.image_maps(listed, {'params': params}, {'kind': 'image', 'mean': [0.0],
                                                          'std': [1.0]}, images,
                               'attention_rollout')
  assert heat.shape == (2, 8, 8)


@pytest.mark.parametrize('name', ['transformer', pytest.param('lstm', marks=pytest.mark.slow)])
def test_token_attributions_are_complete_and_skip_padding(name):
  """Integrated gradients at the token embeddings sum to f(x) - f(zero embeddings)."""
  options = dict(num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_length=8,
                 dropout=0.0) if name == 'transformer' else dict(embed_dim=8, hidden=8, dropout=0.0)
  module = models.MODELS[name](vocab_size=30, num_classes=3, **options)
  tokens = jnp.array([[2, 5, 9, 11, 0, 0, 0, 0], [2, 7, 7, 3, 4, 8, 1, 0]])
  variables = _random_variables(module, tokens)
  heat, targets = explain.token_heat(module, variables, tokens, 'integrated_gradients',
                                     steps=256)
  assert np.all(heat[tokens == 0] == 0)
  embed = variables['params']['Embed_0']['embedding']
  zero = jnp.zeros_like(embed)
  logits = module.apply(variables, tokens)[jnp.arange(2), targets]
  # Zero embeddings: the same model with an all-zero table (positions and the rest remain).
  baseline = module.apply({'params': {**variables['params'], 'Embed_0': {'embedding': zero}}},
                          tokens)[jnp.arange(2), targets]
  np.testing.assert_allclose(heat.sum(1), logits - baseline, rtol=1e-3, atol=1e-5)
  if name == 'transformer':  # The explicit attention path gives the fused path's logits.
    explicit = module.clone(attention='explicit').apply(variables, tokens)
    np.testing.assert_allclose(explicit, module.apply(variables, tokens), atol=1e-5, rtol=1e-5)
    weights = np.asarray(explain.attention_weights(module, variables, tokens))  # (L, B, H, T, S)
    assert weights.shape == (2, 2, 2, 8, 8)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(weights * (tokens == 0)[None, :, None, None, :] == 0)  # No key is padding.
    rollout, _ = explain.token_heat(module, variables, tokens, 'attention_rollout')
    assert np.all(rollout[tokens == 0] == 0) and np.all(rollout[tokens != 0] > 0)


def test_maps_of_a_randomised_model_differ_from_the_trained_models(quadrants):
  """The model-randomisation test: the trained quadrant CNN's maps put more of their mass on
  the square than the same CNN with random weights, and rank the pixels differently."""
  module, trained, randomised, images, labels, quadrant = quadrants
  x, y = images[:32], jnp.asarray(labels[:32])
  methods = {
      'saliency': lambda fn: jnp.abs(explain.input_gradients(fn, x, y)),
      'integrated_gradients': lambda fn: jnp.abs(explain.integrated_gradients(fn, x, y,
                                                                               steps=32)),
      'smoothgrad': lambda fn: explain.smoothgrad(fn, x, y, jax.random.PRNGKey(0), samples=8)}
  for name, method in methods.items():
    heat = jax.jit(lambda v, method=method: method(lambda z: module.apply(v, z / 255.0))[..., 0])
    a, b = np.asarray(heat(trained)), np.asarray(heat(randomised))
    on_square = lambda h: np.mean((h * quadrant[:32]).sum((1, 2)) / h.sum((1, 2)))
    rank = np.mean([scipy.stats.spearmanr(m.ravel(), n.ravel())[0] for m, n in zip(a, b)])
    assert on_square(a) > on_square(b) + 0.2 and rank < 0.7, (name, on_square(a),
                                                               on_square(b), rank)


def test_the_explain_command_and_the_run_report(tmp_path_factory, tmp_path, capsys):
  """A finished run's report holds saliency.png; `jaxmodels explain` writes the maps of its
  test images, equal to |input gradient| summed over channels for the predicted class."""
  from deploy_run import trained_once

  from jaxmodels import console, data as data_lib
  from jaxmodels.runs.trained import TrainedRun
  workdir, root = trained_once(tmp_path_factory)
  assert os.path.getsize(os.path.join(workdir, 'saliency.png')) > 1000
  out = str(tmp_path / 'maps')
  assert console.main(['explain', workdir, '--test', '4', '--method', 'saliency',
                       '--out', out]) == 0
  saved = np.load(os.path.join(out, 'saliency.npz'))
  run = TrainedRun.load(workdir)
  images = np.load(root / 'data' / 'test.npz')['image'][:4].astype(np.float32)
  fn = lambda x: run.module.apply(run.variables, data_lib.to_model_inputs(run.card['inputs'], x))
  predicted = jnp.argmax(fn(images), -1)
  expected = np.abs(explain.input_gradients(fn, images, predicted)).sum(-1)
  np.testing.assert_allclose(saved['heat'], expected, rtol=1e-5, atol=1e-8)
  assert os.path.getsize(os.path.join(out, 'saliency.png')) > 1000
  assert console.main(['explain', workdir, '--test', '2', '--method', 'nonsense']) == 2
  assert capsys.readouterr().err.strip().startswith("error: method 'nonsense'")


@pytest.mark.slow
def test_the_explain_command_on_texts(tmp_path, mock_tfds, capsys):
  """`jaxmodels explain RUN TEXT` on a BERT-style run writes per-token heat (JSON, PNG,
  HTML); the integrated-gradients heat of a text sums to f(x) - f(zero embeddings)."""
  import json

  from jaxmodels import console
  from jaxmodels.tasks import runner, text_classification
  from jaxmodels.runs.trained import TrainedRun
  config = runner.default_config(text_classification.TASK, EXTENSIONS)
  config.model = dict(name='transformer', num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32,
                      dropout=0.0)
  config.data.update(source='tfds', max_length=12, min_count=1)
  config.train.update(batch_size=16, num_steps=4, log_every_steps=2, eval_batch_size=64,
                      steps_per_dispatch=1, progress=False)
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'maps')
  with mock_tfds(num_examples=48):
    runner.run(text_classification.TASK, config, workdir, extensions=EXTENSIONS)
  run = TrainedRun.load(workdir)
  text = ' '.join(run.card['inputs']['vocabulary'][:5])
  capsys.readouterr()
  assert console.main(['explain', workdir, text, '--steps', '256', '--out', out]) == 0
  (record,) = json.load(open(os.path.join(out, 'integrated_gradients.json')))
  assert record['tokens'] == ['[CLS]', *text.split()]
  assert len(record['heat']) == len(record['tokens'])
  tokens = run.model_inputs([text])
  target = run.class_names.index(record['explained'])
  params = run.variables['params']
  zero = {**params, 'Embed_0': {'embedding': jnp.zeros_like(params['Embed_0']['embedding'])}}
  delta = (run.module.apply(run.variables, tokens)[0, target]
           - run.module.apply({**run.variables, 'params': zero}, tokens)[0, target])
  np.testing.assert_allclose(sum(record['heat']), delta, rtol=1e-3, atol=1e-5)
  for suffix in ('png', 'html'):
    assert os.path.getsize(os.path.join(out, f'integrated_gradients.{suffix}')) > 200
