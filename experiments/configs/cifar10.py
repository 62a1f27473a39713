"""CIFAR-10 recipes; pick one with --config=experiments/configs/cifar10.py:<variant>.

  convnet (default)  VGG-style ConvNet + BN, flip + crop, SGD one-cycle, 40 epochs (~0.90)
  resnet             ResNet-18 (CIFAR stem) + BN, flip + crop, SGD one-cycle, 40 epochs (~0.94)
  vit                ViT, 4x4 patches, 6 layers x 192, AdamW warmup-cosine, 100 epochs (~0.80)
  three_conv         the seed's three-conv CNN with BN and dropout, 30 epochs (~0.78)
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification

MODELS = {
    'convnet': dict(name='convnet', widths=(64, 128, 256), convs_per_stage=2, dropout=0.3,
                    remat=False),
    'resnet': dict(name='resnet', stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                   remat=False),
    'vit': dict(name='vit', patch_size=4, num_layers=6, num_heads=4, embed_dim=192, mlp_dim=384,
                dropout=0.1, scan_layers=False, remat=False),
    'three_conv': dict(name='cifar10_cnn', widths=(32, 64, 64), dense=64, batch_norm=True,
                       dropout=0.3),
}


def get_config(variant: str = 'convnet'):
  if variant not in MODELS:
    raise ValueError(f'unknown cifar10 variant {variant!r}; choose one of {", ".join(MODELS)}')
  config = cli.default_config(image_classification.TASK)
  config.data.name = 'cifar10'
  config.model = MODELS[variant]
  config.augment.flip = True
  config.augment.crop_padding = 4
  config.optimizer.update(name='sgd', learning_rate=0.1, schedule='one_cycle', warmup_epochs=0.0,
                          weight_decay=5e-4, momentum=0.9, clip_norm=0.0)
  config.train.num_epochs = 40.0
  config.train.label_smoothing = 0.1
  if variant == 'vit':
    config.optimizer.update(name='adamw', learning_rate=1e-3, schedule='warmup_cosine',
                            warmup_epochs=5.0, weight_decay=0.05, clip_norm=1.0)
    config.train.num_epochs = 100.0
  elif variant == 'three_conv':
    config.optimizer.update(name='adamw', learning_rate=2e-3, schedule='warmup_cosine',
                            warmup_epochs=1.0, weight_decay=5e-4, clip_norm=0.0)
    config.train.num_epochs = 30.0
  return config
