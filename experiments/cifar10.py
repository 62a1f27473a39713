"""Trains a ConvNet on CIFAR-10 with flip/crop augmentation; writes logs, plots and a summary.

  python experiments/cifar10.py --workdir=runs/cifar10

Offline: --config.data.local_dir=DIR with the CIFAR-10 binary files
(data_batch_1.bin ... data_batch_5.bin, test_batch.bin).
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification

if __name__ == '__main__':
  cli.run(image_classification.TASK, __file__)
