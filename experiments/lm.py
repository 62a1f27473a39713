"""Trains a byte-level GPT language model; prints samples as it goes and at the end.

  python experiments/lm.py --config.data.text_file=/usr/share/games/fortunes
  python experiments/lm.py --config.train.num_steps=200 --config.model.num_layers=2

Reports validation loss and perplexity next to the corpus's unigram entropy, and
tokens/s and MFU (on accelerators with a known peak) in summary.txt.
"""
from jaxmodels import cli
from jaxmodels.tasks import language_model

if __name__ == '__main__':
  cli.run(language_model.TASK, __file__)
