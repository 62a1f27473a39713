"""int8 post-training quantisation and quantisation-aware training (qwix): the stored int8
values and scales follow the absmax / 127.5 convention, computed here in numpy; the
weight-only model computes what the float model computes with those dequantised kernels;
w8a8 computes what a float model with fake-quantised layer inputs computes; kernels take
>= 3.5x fewer bytes; and a QAT run's int8 model predicts as the run trained."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix

from jaxmodels import compress, models
from jaxmodels.compress import measure
from jaxmodels.models.transformer import Projection
from jaxmodels.tasks import image_classification, runner
from jaxmodels.runs.trained import TrainedRun
from jaxmodels.cli import default_extensions

EXTENSIONS = default_extensions()  # What the experiments apply.

IMAGES = np.random.default_rng(0).normal(size=(6, 28, 28, 1)).astype(np.float32)
MODELS = {
    'small_cnn': {},
    'three_conv_cnn': dict(widths=(8, 16, 16), dense=24, batch_norm=True),
    'vit': dict(patch_size=7, num_layers=1, num_heads=2, embed_dim=16, mlp_dim=24),
}


def _init(name):
  module = models.MODELS[name](num_classes=10, **MODELS[name])
  variables = module.init(jax.random.key(1), IMAGES[:1], train=False)
  return module, jax.tree.map(np.asarray, dict(nn.meta.unbox(variables)))


def _check_int8(kernel: np.ndarray, qvalue: np.ndarray, scale: np.ndarray) -> None:
  """scale = absmax / 127.5 per output channel and q = clip(round(kernel / scale), -128, 127);
  at a tie (x.5: a channel's absmax is one, at +-127.5) either side is right, as float32
  division here and in XLA may differ in the last bit."""
  axes = tuple(i for i, n in enumerate(scale.shape) if n == 1)
  np.testing.assert_allclose(scale, np.abs(kernel).max(axis=axes, keepdims=True) / 127.5,
                             rtol=1e-6)
  ratio = kernel / scale
  expected = np.clip(np.round(ratio), -128, 127)
  tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-4
  np.testing.assert_array_equal(np.where(tie, 0, qvalue), np.where(tie, 0, expected))
  assert np.all(np.abs(qvalue[tie].astype(int) - expected[tie]) <= 1)


@pytest.mark.parametrize('name', ['small_cnn', 'vit',
                                  pytest.param('three_conv_cnn', marks=pytest.mark.slow)])
def test_int8_forward_equals_the_float_forward_with_dequantised_weights(name):
  module, variables = _init(name)
  quantized = compress.quantize(module, variables, IMAGES[:1], 'int8')
  reference = jax.tree.map(lambda x: x, variables['params'])
  kernels = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      quantized.variables['params'], is_leaf=compress.is_quantized)[0]:
    if not compress.is_quantized(leaf):
      continue
    kernels += 1
    keys = [p.key for p in path]
    original = variables['params']
    for key in keys:
      original = original[key]
    scale = np.asarray(leaf.array.scale)
    # Per output channel: the input (contracted) axis is reduced, the output one is not.
    assert scale.shape[0] == 1 and scale.shape[-1] == original.shape[-1]
    qvalue = np.asarray(leaf.array.qvalue)
    assert qvalue.dtype == np.int8
    _check_int8(original, qvalue, scale)
    node = reference
    for key in keys[:-1]:
      node = node[key]
    node[keys[-1]] = qvalue.astype(np.float32) * scale  # Dequantised in numpy.
  expected = module.apply({**variables, 'params': reference}, IMAGES, train=False)
  assert kernels >= 3
  np.testing.assert_allclose(quantized.apply(IMAGES), expected, atol=1e-5, rtol=0)


def _fake_quantized_inputs(module, variables, inputs):
  """The float model with dequantised kernels, each Conv / Dense / Projection input rounded to
  int8 per example (Conv) or per row (matmuls), scale = absmax / 127.5: what w8a8 computes."""

  def fake_quantize(x, channel_axes):
    axes = tuple(i for i in range(x.ndim) if i not in channel_axes)
    scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True) / 127.5
    return jnp.clip(jnp.round(x / scale), -128, 127) * scale

  def interceptor(next_fun, args, kwargs, context):
    layer = context.module
    if context.method_name == '__call__' and isinstance(layer, (nn.Conv, nn.Dense, Projection)):
      x = args[0]
      channels = (0,) if isinstance(layer, nn.Conv) else tuple(range(x.ndim - 1))
      args = (fake_quantize(x, channels), *args[1:])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return module.apply(variables, inputs, train=False)


@pytest.mark.parametrize('name', ['small_cnn', 'three_conv_cnn'])
def test_w8a8_forward_equals_float_math_on_fake_quantised_inputs_and_weights(name):
  module, variables = _init(name)
  quantized = compress.quantize(module, variables, IMAGES[:1], 'w8a8')
  dequantized = {**variables, 'params': jax.tree.map(
      lambda x: qwix.dequantize(x.array) if compress.is_quantized(x) else x,
      quantized.variables['params'], is_leaf=compress.is_quantized)}  # q * scale
  expected = _fake_quantized_inputs(module, dequantized, IMAGES)
  np.testing.assert_allclose(quantized.apply(IMAGES), expected, atol=1e-5, rtol=1e-5)


def test_int8_kernels_take_at_least_3_5x_fewer_bytes_and_round_trip_through_a_file(tmp_path):
  module, variables = _init('small_cnn')
  quantized = compress.quantize(module, variables, IMAGES[:1], 'w8a8')
  counted = quantized.weight_bytes
  float_bytes = sum(np.asarray(variables['params'][layer]['kernel']).nbytes
                    for layer in ('Conv_0', 'Dense_0', 'Dense_1'))
  assert counted['float'] == float_bytes and float_bytes / counted['quantized'] >= 3.5
  size = quantized.save(str(tmp_path / 'w8a8.npz'))
  assert measure.save_arrays(str(tmp_path / 'fp32.npz'), variables) / size >= 3.5
  with np.load(str(tmp_path / 'w8a8.npz')) as stored:  # Every array, as it was.
    flat = measure.flat_arrays(quantized.variables)
    assert sorted(stored.files) == sorted(flat)
    for name, array in flat.items():
      np.testing.assert_array_equal(stored[name], array)


@pytest.mark.slow
def test_a_quantisation_aware_run_converts_to_the_int8_model_it_trained_as(tmp_path):
  """The int8 (w8a8) model of a QAT run gives the logits of the run's fake-quantised model."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 160)
  images = rng.integers(0, 80, (160, 10, 10, 1))
  images[np.arange(160), 2 * labels, 2 * labels] = 255
  directory = tmp_path / 'spots'
  directory.mkdir()
  np.savez(directory / 'train.npz', image=images[:128].astype(np.uint8), label=labels[:128],
           class_names=np.array(list('abcd')))
  np.savez(directory / 'test.npz', image=images[128:].astype(np.uint8), label=labels[128:])
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  config.data.update(name='spots', local_dir=str(directory), val_fraction=0.0)
  config.model = dict(name='three_conv_cnn', widths=(8, 12), dense=20, batch_norm=True)
  config.quantization.qat = 'w8a8'
  config.train.update(batch_size=16, num_steps=12, steps_per_dispatch=4, progress=False)
  summary = runner.run(image_classification.TASK, config, str(tmp_path / 'run'), extensions=EXTENSIONS)
  assert summary['quantization_aware'] == 'w8a8'
  run = TrainedRun.load(str(tmp_path / 'run'))
  inputs = run.model_inputs(images[128:])
  variables = jax.tree.map(jnp.asarray, run.variables)  # qwix finds kernels among jax.Arrays.
  fake = compress.qat_module(run.module, 'w8a8').apply(variables, inputs, train=False)
  int8 = compress.quantize_run(run, 'w8a8').apply(inputs)
  np.testing.assert_allclose(int8, fake, atol=1e-4, rtol=1e-4)
  accuracy = np.mean(np.argmax(int8, -1) == labels[128:])
  assert accuracy == pytest.approx(summary['test']['accuracy'], abs=1e-6)
