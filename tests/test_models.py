"""Seed models: output shapes and parameter counts equal to the Keras originals."""
import jax
import jax.numpy as jnp
import pytest

from jaxmodels.models import MLP, Cifar10CNN, ConvNet, SmallCNN, ThreeConvCNN
from jaxmodels.runs import build_module


def _count(model, shape):
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), train=False)
  logits = model.apply(variables, jnp.zeros((2, *shape)), train=False)
  return sum(x.size for x in jax.tree.leaves(variables['params'])), logits


@pytest.mark.parametrize('model, shape, keras_params', [
    # Conv2D(32,3) -> MaxPool(2) -> Dense(128) -> Dense(10), as model.summary() reports it.
    (SmallCNN(), (28, 28, 1), 693_962),
    # The TensorFlow CNN tutorial: conv32/pool/conv64/pool/conv64/dense64/dense10.
    (ThreeConvCNN(), (28, 28, 1), 93_322),
    (ThreeConvCNN(), (32, 32, 3), 122_570),
    (MLP(hidden=(128,)), (28, 28, 1), 101_770),
])
def test_seed_models_match_keras_parameter_counts(model, shape, keras_params):
  params, logits = _count(model, shape)
  assert params == keras_params
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_cifar10_variant_adds_batch_norm_and_dropout():
  model = Cifar10CNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
  assert len(variables['batch_stats']) == 3
  assert model.dropout > 0


def test_convnet_and_registry():
  model = build_module('convnet', {'num_classes': 7, 'widths': [8, 16]})
  assert isinstance(model, ConvNet) and model.widths == (8, 16)
  _, logits = _count(model, (16, 16, 3))
  assert logits.shape == (2, 7)
