"""Fashion-MNIST recipes for the compression table (benchmarks/compress_table.py): one CNN
(three convolutions (32, 64, 64), batch-norm, 64-unit dense layer; flips, label smoothing,
AdamW warmup-cosine, 3 epochs) trained as it is and compressed while training.

  fp32 (default)  the float model: the teacher, and the model quantised after training.
  qat             the same, trained through int8 fake quantisation of weights and activations.
  prune50/prune80 the same, magnitude-pruned (per layer) to 50 % / 80 % zero kernel weights
                  by a cubic schedule that ends at three quarters of the run.

  python experiments/fashion_mnist.py --config=experiments/configs/compress.py:qat \
      --workdir=runs/compress/qat
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification

VARIANTS = ('fp32', 'qat', 'prune50', 'prune80')


def get_config(variant: str = 'fp32'):
  if variant not in VARIANTS:
    raise ValueError(f'unknown compress variant {variant!r}; choose one of {", ".join(VARIANTS)}')
  config = cli.default_config(image_classification.TASK)
  config.data.name = 'fashion_mnist'
  config.model = dict(name='three_conv_cnn', widths=(32, 64, 64), dense=64, batch_norm=True)
  config.augment.flip = True
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 5e-4
  config.train.batch_size = 64
  config.train.num_epochs = 3.0
  config.train.label_smoothing = 0.1
  config.train.log_every_steps = 400
  if variant == 'qat':
    config.quantization.qat = 'w8a8'
  if variant.startswith('prune'):
    config.pruning.sparsity = int(variant[len('prune'):]) / 100
  return config
