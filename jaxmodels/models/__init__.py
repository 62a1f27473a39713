"""Flax Linen model zoo. Every model is called as `model(x, train=bool)`; the Transformer
families carry logical axis names for sharding (see `parallel.LOGICAL_AXIS_RULES`)."""
from jaxmodels.models.bert import BertClassifier, BertEncoder, bert_encoder_of
from jaxmodels.models.cnn import Cifar10CNN, ConvNet, SmallCNN, ThreeConvCNN
from jaxmodels.models.gpt import GPT, generate, sample_logits
from jaxmodels.models.mlp import MLP
from jaxmodels.models.resnet import ResNet
from jaxmodels.models.text_classifiers import LSTMClassifier, TransformerClassifier
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
    'transformer': TransformerClassifier,
    'bert_classifier': BertClassifier,
    'gpt': GPT,
}


__all__ = ['bert_encoder_of', 'BertClassifier', 'BertEncoder', 'Cifar10CNN', 'ConvNet', 'Encoder',
           'generate', 'GPT', 'LSTMClassifier', 'MLP', 'MODELS', 'ResNet', 'sample_logits',
           'SmallCNN', 'ThreeConvCNN', 'TransformerClassifier', 'ViT']
