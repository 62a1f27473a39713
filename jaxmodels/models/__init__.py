"""Flax Linen model zoo. Every model is called as `model(x, train=bool)`; the Transformer
families carry logical axis names for sharding (see `parallel.LOGICAL_AXIS_RULES`)."""
from jaxmodels.models.bert import BertClassifier, BertEncoder
from jaxmodels.models.cnn import Cifar10CNN, ConvNet, SmallCNN, ThreeConvCNN
from jaxmodels.models.gpt import GPT, generate, sample_logits
from jaxmodels.models.mlp import MLP
from jaxmodels.models.resnet import ResNet
from jaxmodels.models.text import LSTMClassifier, TransformerClassifier
from jaxmodels.models.transformer import Encoder
from jaxmodels.models.vit import ViT

# Config name -> Linen module class; each takes `num_classes` plus keyword options.
MODELS = {
    'mlp': MLP,
    'small_cnn': SmallCNN,
    'three_conv_cnn': ThreeConvCNN,
    'cifar10_cnn': Cifar10CNN,
    'convnet': ConvNet,
    'resnet': ResNet,
    'vit': ViT,
    'lstm': LSTMClassifier,
    'bert': TransformerClassifier,
    'bert_classifier': BertClassifier,
    'gpt': GPT,
}


def create_model(name: str, **kwargs):
  """Builds a registered model by name; raises KeyError/TypeError on bad names/options."""
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; known models: {", ".join(sorted(MODELS))}')
  return MODELS[name](**kwargs)


__all__ = ['MLP', 'SmallCNN', 'ThreeConvCNN', 'ConvNet', 'Cifar10CNN', 'ResNet', 'ViT',
           'LSTMClassifier', 'TransformerClassifier', 'BertEncoder', 'BertClassifier', 'GPT',
           'Encoder', 'generate', 'sample_logits', 'MODELS', 'create_model']
