"""Trains a CNN on Fashion-MNIST (with augmentation); writes logs, plots and a summary.

  python experiments/fashion_mnist.py --workdir=runs/fashion_mnist

Offline, Debian's dataset-fashion-mnist files are found automatically; other
local IDX files work with --config.data.local_dir=DIR.
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification

if __name__ == '__main__':
  cli.run(image_classification.TASK, __file__)
