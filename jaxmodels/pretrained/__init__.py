"""Pretrained models in: Hugging Face directories (config.json + safetensors) of GPT-2,
BERT and ViT loaded into jaxmodels' models through regex name maps, checked logit for
logit against transformers (tests/test_pretrained.py), and their tokenizers
(tokenizer.json, through the `tokenizers` library)."""
from jaxmodels.pretrained.architectures import ARCHITECTURES, model_arguments
from jaxmodels.pretrained.files import read_config, read_tensors
from jaxmodels.pretrained.loader import load_params, load_pretrained, pretrained_model
from jaxmodels.pretrained.name_map import Rule, map_tensors
from jaxmodels.pretrained.resize import resize_grid
from jaxmodels.pretrained.tokenizer import TextTokenizer

__all__ = ['ARCHITECTURES', 'Rule', 'TextTokenizer', 'load_params', 'load_pretrained',
           'map_tensors', 'model_arguments', 'pretrained_model', 'read_config', 'read_tensors',
           'resize_grid']
