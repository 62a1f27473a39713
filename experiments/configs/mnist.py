"""MNIST: the three-conv CNN with light augmentation. Expect ~99.3% test accuracy."""
from jaxmodels.tasks import image_classification


def get_config():
  config = image_classification.default_config()
  config.data.name = 'mnist'
  config.model = dict(name='three_conv_cnn', widths=(32, 64, 64), dense=64, batch_norm=True,
                      dropout=0.2)
  config.augment.shift = 0.08
  config.optimizer.learning_rate = 3e-3
  config.train.num_epochs = 8
  config.train.label_smoothing = 0.05
  return config
