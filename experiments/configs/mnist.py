"""MNIST: the three-conv CNN with batch-norm, shift augmentation and label smoothing.

Offline with no MNIST files it trains on scikit-learn's bundled 8x8 digits instead
(`data.fallback='digits'`; `--config.data.fallback=none` requires MNIST).
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification


def get_config():
  config = cli.default_config(image_classification.TASK)
  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  config.model = dict(name='three_conv_cnn', widths=(32, 64, 64), dense=64, batch_norm=True,
                      dropout=0.2)
  config.augment.shift = 0.08
  config.optimizer.learning_rate = 3e-3
  config.train.num_epochs = 8.0
  config.train.label_smoothing = 0.05
  return config
