"""Flax Linen model zoo. Every model is called as `model(x, train=bool)`."""
from jaxmodels.models.cnn import Cifar10CNN, ConvNet, SmallCNN, ThreeConvCNN
from jaxmodels.models.mlp import MLP

# Config name -> Linen module class; each takes `num_classes` plus keyword options.
MODELS = {
    'mlp': MLP,
    'small_cnn': SmallCNN,
    'three_conv_cnn': ThreeConvCNN,
    'cifar10_cnn': Cifar10CNN,
    'convnet': ConvNet,
}


def create_model(name: str, **kwargs):
  """Builds a registered model by name; raises KeyError/TypeError on bad names/options."""
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; known models: {", ".join(sorted(MODELS))}')
  return MODELS[name](**kwargs)


__all__ = ['MLP', 'SmallCNN', 'ThreeConvCNN', 'ConvNet', 'Cifar10CNN', 'MODELS', 'create_model']
