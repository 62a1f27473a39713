"""What each supported checkpoint family is in jaxmodels: the model (a `models.MODELS`
name), its arguments from config.json, the name map, the tensors to ignore and the heads
that a checkpoint may lack (they keep their fresh init).

  gpt2  GPT2Model / GPT2LMHeadModel          -> 'gpt' (learned positions, tanh GELU, tied head)
  bert  BertModel / BertForSequenceClassification -> 'bert_classifier' (post-LayerNorm)
  vit   ViTModel / ViTForImageClassification -> 'vit' ([CLS], exact GELU)
"""
from typing import NamedTuple

from jaxmodels.errors import CheckpointError
from jaxmodels.pretrained.name_map import Rule, layer_norm, linear

# transformers' activation names -> the models' (transformer.ACTIVATIONS).
ACTIVATIONS = {'gelu': 'gelu_erf', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
               'gelu_fast': 'gelu_tanh', 'relu': 'relu'}


class Architecture(NamedTuple):
  model: str               # models.MODELS name.
  rules: list[Rule]
  ignore: str              # Tensors dropped on purpose (fullmatch).
  optional: str            # Params a checkpoint may lack: a head of another task (search).
  arguments: object        # config.json -> model arguments.


def _activation(config: dict, key: str) -> str:
  name = config.get(key, 'gelu')
  if name not in ACTIVATIONS:
    raise CheckpointError(f'config.json sets {key}={name!r}, which no jaxmodels model has '
                          f'(supported: {", ".join(ACTIVATIONS)})', key='init_from')
  return ACTIVATIONS[name]


def _gpt2_arguments(config: dict) -> dict:
  if config.get('scale_attn_by_inverse_layer_idx') or not config.get('scale_attn_weights', True):
    raise CheckpointError('this GPT-2 scales attention unlike 1/sqrt(head_dim) '
                          '(scale_attn_by_inverse_layer_idx or scale_attn_weights=false): '
                          'not supported', key='init_from')
  embed = config['n_embd']
  return {'vocab_size': config['vocab_size'], 'max_length': config['n_positions'],
          'embed_dim': embed, 'num_layers': config['n_layer'], 'num_heads': config['n_head'],
          'mlp_dim': config.get('n_inner') or 4 * embed, 'positions': 'learned',
          'tie_embeddings': config.get('tie_word_embeddings', True),
          'norm_epsilon': config.get('layer_norm_epsilon', 1e-5),
          'activation': _activation(config, 'activation_function'), 'attention_bias': True,
          'dropout': config.get('resid_pdrop', 0.1)}


def _labels(config: dict) -> dict:
  labels = config.get('id2label')
  return {'num_classes': len(labels)} if labels else {}


def _bert_arguments(config: dict) -> dict:
  if config.get('position_embedding_type', 'absolute') != 'absolute':
    raise CheckpointError(f'BERT with position_embedding_type='
                          f'{config["position_embedding_type"]!r} is not supported (absolute '
                          'positions only)', key='init_from')
  return {'vocab_size': config['vocab_size'], 'max_positions': config['max_position_embeddings'],
          'type_vocab_size': config.get('type_vocab_size', 2), 'embed_dim': config['hidden_size'],
          'num_layers': config['num_hidden_layers'], 'num_heads': config['num_attention_heads'],
          'mlp_dim': config['intermediate_size'], 'norm_epsilon': config.get('layer_norm_eps',
                                                                             1e-12),
          'activation': _activation(config, 'hidden_act'), 'attention_bias': True,
          'pad_id': config.get('pad_token_id') or 0,
          'dropout': config.get('hidden_dropout_prob', 0.1), **_labels(config)}


def _vit_arguments(config: dict) -> dict:
  return {'patch_size': config.get('patch_size', 16), 'embed_dim': config['hidden_size'],
          'num_layers': config['num_hidden_layers'], 'num_heads': config['num_attention_heads'],
          'mlp_dim': config['intermediate_size'],
          'norm_epsilon': config.get('layer_norm_eps', 1e-12),
          'activation': _activation(config, 'hidden_act'),
          'attention_bias': config.get('qkv_bias', True),
          'dropout': config.get('hidden_dropout_prob', 0.0), **_labels(config)}


def _block(prefix: str, target: str, attention: str, norm1: str, norm2: str) -> list[Rule]:
  """BERT's and ViT's encoder layer: the same tensors under different names."""
  layer = prefix + r'encoder\.layer\.(\d+)\.'
  to = target + r'/layer\1/'
  return [*linear(layer + attention + r'\.(query|key|value)', to + r'attention/\2', heads='out'),
          *linear(layer + r'attention\.output\.dense', to + 'attention/out', heads='in'),
          *layer_norm(layer + norm1, to + 'norm1'), *layer_norm(layer + norm2, to + 'norm2'),
          *linear(layer + r'intermediate\.dense', to + 'mlp/Dense_0'),
          *linear(layer + r'output\.dense', to + 'mlp/Dense_1')]


_GPT2 = r'(?:transformer\.)?'
_GPT2_LAYER = _GPT2 + r'h\.(\d+)\.'
GPT2 = Architecture('gpt', [
    Rule(_GPT2 + r'wte\.weight', 'embed/embedding'),
    Rule(_GPT2 + r'wpe\.weight', 'position_embedding'),
    *layer_norm(_GPT2_LAYER + 'ln_1', r'decoder/layer\1/norm1'),
    *layer_norm(_GPT2_LAYER + 'ln_2', r'decoder/layer\1/norm2'),
    # Conv1D layers store (in, out): no transpose. c_attn holds q, k and v side by side.
    Rule(_GPT2_LAYER + r'attn\.c_attn\.weight', r'decoder/layer\1/attention/{part}/kernel',
         heads=1, split=('query', 'key', 'value')),
    Rule(_GPT2_LAYER + r'attn\.c_attn\.bias', r'decoder/layer\1/attention/{part}/bias',
         heads=0, split=('query', 'key', 'value')),
    Rule(_GPT2_LAYER + r'attn\.c_proj\.weight', r'decoder/layer\1/attention/out/kernel',
         heads=0),
    Rule(_GPT2_LAYER + r'attn\.c_proj\.bias', r'decoder/layer\1/attention/out/bias'),
    Rule(_GPT2_LAYER + r'mlp\.c_fc\.weight', r'decoder/layer\1/mlp/Dense_0/kernel'),
    Rule(_GPT2_LAYER + r'mlp\.c_fc\.bias', r'decoder/layer\1/mlp/Dense_0/bias'),
    Rule(_GPT2_LAYER + r'mlp\.c_proj\.weight', r'decoder/layer\1/mlp/Dense_1/kernel'),
    Rule(_GPT2_LAYER + r'mlp\.c_proj\.bias', r'decoder/layer\1/mlp/Dense_1/bias'),
    *layer_norm(_GPT2 + 'ln_f', 'decoder/final_norm'),
], ignore=r'lm_head\.weight|.*\.attn\.(?:masked_)?bias', optional=r'^head/',
    arguments=_gpt2_arguments)

_BERT = r'(?:bert\.)?'
BERT = Architecture('bert_classifier', [
    Rule(_BERT + r'embeddings\.word_embeddings\.weight', 'bert/token_embed/embedding'),
    Rule(_BERT + r'embeddings\.position_embeddings\.weight', 'bert/position_embedding'),
    Rule(_BERT + r'embeddings\.token_type_embeddings\.weight', 'bert/type_embed/embedding'),
    *layer_norm(_BERT + r'embeddings\.LayerNorm', 'bert/embed_norm'),
    *_block(_BERT, 'bert/encoder', r'attention\.self', r'attention\.output\.LayerNorm',
            r'output\.LayerNorm'),
    *linear(_BERT + r'pooler\.dense', 'bert/pooler'),
    *linear(r'classifier', 'classifier'),
], ignore=r'.*position_ids|cls\..*', optional=r'^classifier/', arguments=_bert_arguments)

_VIT = r'(?:vit\.)?'
VIT = Architecture('vit', [
    Rule(_VIT + r'embeddings\.cls_token', 'cls'),
    Rule(_VIT + r'embeddings\.position_embeddings', 'position_embedding', resize_grid=True),
    # Conv2d (out, in, kh, kw) -> Flax Conv (kh, kw, in, out).
    Rule(_VIT + r'embeddings\.patch_embeddings\.projection\.weight', 'patch_embed/kernel',
         (2, 3, 1, 0)),
    Rule(_VIT + r'embeddings\.patch_embeddings\.projection\.bias', 'patch_embed/bias'),
    *_block(_VIT, 'encoder', r'attention\.attention', 'layernorm_before', 'layernorm_after'),
    *layer_norm(_VIT + 'layernorm', 'encoder/final_norm'),
    *linear('classifier', 'head'),
], ignore=r'(?:vit\.)?pooler\..*', optional=r'^head/', arguments=_vit_arguments)

ARCHITECTURES = {'gpt2': GPT2, 'bert': BERT, 'vit': VIT}


def architecture_of(config: dict, directory: str) -> Architecture:
  """The Architecture of a config.json; CheckpointError for one jaxmodels cannot hold."""
  model_type = config.get('model_type')
  if model_type not in ARCHITECTURES:
    raise CheckpointError(f'{directory} holds a {model_type!r} model (config.json model_type); '
                          f'jaxmodels loads {", ".join(sorted(ARCHITECTURES))}',
                          key='init_from')
  return ARCHITECTURES[model_type]


def model_arguments(config: dict, directory: str) -> tuple[str, dict]:
  """(models.MODELS name, constructor arguments) of the model a config.json describes."""
  architecture = architecture_of(config, directory)
  try:
    return architecture.model, architecture.arguments(config)
  except KeyError as e:
    raise CheckpointError(f'{directory}/config.json lacks {e.args[0]!r}, which a '
                          f'{config["model_type"]} config has', key='init_from') from None
