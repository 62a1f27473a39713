"""Fashion-MNIST recipes; pick one with --config=experiments/configs/fashion_mnist.py:<variant>.

  cnn (default)  the three-conv CNN widened to (64, 128, 128), batch-norm, light dropout,
                 random flips, label smoothing; AdamW warmup-cosine, 10 epochs. Measured
                 on a 2-core CPU: 0.931 test accuracy (the seed recipe reaches 0.9175).
  vit            a small ViT on 4x4 patches (7x7 = 49 tokens), AdamW, 20 epochs.
  mlp            a wide MLP (784-4096-4096-4096-10, 147 MB of float32 weights), dropout,
                 AdamW, 3 epochs. A batch-1 call reads every weight, a batch-64 call
                 reads them once for 64 images: the model serve_load.py's batching
                 figure is measured on (see benchmarks/README.md).
  fast           the seed SmallCNN with flips and label smoothing, AdamW warmup-cosine,
                 10 epochs: 0.926 test accuracy in 82 s end to end on a 2-core CPU
                 (benchmarks/cpu_cnn.py measures it).
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification


def get_config(variant: str = 'cnn'):
  if variant not in ('cnn', 'vit', 'mlp', 'fast'):
    raise ValueError(f"unknown fashion_mnist variant {variant!r}; choose 'cnn', 'vit', 'mlp' or "
                     "'fast'")
  config = cli.default_config(image_classification.TASK)
  config.data.name = 'fashion_mnist'
  config.model = dict(name='three_conv_cnn', widths=(64, 128, 128), dense=128, batch_norm=True,
                      dropout=0.1)
  config.augment.flip = True
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 5e-4
  config.train.num_epochs = 10.0
  config.train.label_smoothing = 0.1
  if variant == 'vit':
    config.model = dict(name='vit', patch_size=4, num_layers=4, num_heads=4, embed_dim=128,
                        mlp_dim=256, dropout=0.1, scan_layers=False, remat=False)
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.05
    config.optimizer.clip_norm = 1.0
    config.train.num_epochs = 20.0
  if variant == 'mlp':
    config.model = dict(name='mlp', hidden=(4096, 4096, 4096), dropout=0.2)
    config.augment.flip = False
    config.optimizer.learning_rate = 1e-3
    config.train.num_epochs = 3.0
  if variant == 'fast':
    config.model = dict(name='small_cnn')
    config.optimizer.learning_rate = 2e-3
    config.train.batch_size = 64  # Its activations stay in the CPU's caches.
    config.train.num_epochs = 10.0
    config.data.val_fraction = 0.0  # All 60,000 training images; test is reported once.
    config.train.eval_every_steps = 4685  # Every 5 epochs (937 steps each).
    config.train.log_every_steps = 200
  return config
