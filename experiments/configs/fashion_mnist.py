"""Fashion-MNIST: the three-conv CNN with batch-norm, dropout and flip/shift augmentation."""
from jaxmodels.tasks import image_classification


def get_config():
  config = image_classification.default_config()
  config.data.name = 'fashion_mnist'
  config.model = dict(name='three_conv_cnn', widths=(32, 64, 64), dense=128, batch_norm=True,
                      dropout=0.3)
  config.augment.flip = True
  config.augment.shift = 0.1
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 5e-4
  config.train.num_epochs = 15
  config.train.label_smoothing = 0.1
  config.train.steps_per_dispatch = 4
  return config
