"""CIFAR-10: a VGG-style ConvNet (batch-norm) with flip + crop augmentation and SGD one-cycle.

The seed's three-conv CNN reaches about 0.72; this recipe is the usual
~0.90 one. `--config.model.name=cifar10_cnn` selects the three-conv variant.
"""
from jaxmodels.tasks import image_classification


def get_config():
  config = image_classification.default_config()
  config.data.name = 'cifar10'
  config.model = dict(name='convnet', widths=(64, 128, 256), convs_per_stage=2, dropout=0.3)
  config.augment.flip = True
  config.augment.crop_padding = 4
  config.optimizer = dict(name='sgd', learning_rate=0.1, schedule='one_cycle', warmup_epochs=0.0,
                          weight_decay=5e-4, momentum=0.9, clip_norm=0.0)
  config.train.num_epochs = 40
  config.train.label_smoothing = 0.1
  config.train.steps_per_dispatch = 4
  return config
