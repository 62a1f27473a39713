"""Trains an LSTM or BERT-style text classifier; ends with a classification report.

  python experiments/text_classify.py                           # Embedding + BiLSTM
  python experiments/text_classify.py --config.model.name=transformer  # Transformer encoder
  python experiments/text_classify.py --config.data.local_dir=DIR  # one text file per class
"""
from jaxmodels import cli
from jaxmodels.tasks import text_classification

if __name__ == '__main__':
  cli.run(text_classification.TASK, __file__)
