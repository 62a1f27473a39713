"""Trains a CNN on MNIST and writes TensorBoard logs, plots and a summary to --workdir.

  python experiments/mnist.py --workdir=runs/mnist --config.train.num_epochs=3

Data comes from tfds, or offline from --config.data.local_dir (IDX *-ubyte.gz files).
"""
from jaxmodels import cli
from jaxmodels.tasks import image_classification

if __name__ == '__main__':
  cli.run(image_classification.TASK, __file__)
