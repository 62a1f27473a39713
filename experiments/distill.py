"""Distils a finished Fashion-MNIST run (the teacher) into a small CNN (the student).

  python experiments/fashion_mnist.py --workdir=runs/fashion_mnist      # the teacher
  python experiments/distill.py --workdir=runs/distill \
      --config.distill.teachers=runs/fashion_mnist [--config.distill.temperature=4]

Several teachers, comma-separated, form an ensemble averaged in probability space.
"""
from jaxmodels import cli
from jaxmodels.tasks import distillation

if __name__ == '__main__':
  cli.run(distillation.TASK, __file__)
