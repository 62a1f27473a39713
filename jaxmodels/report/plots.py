"""PNG plots: training curves, a confusion matrix, and a grid of predictions.

Built on `matplotlib.figure.Figure` directly, so no display or pyplot state is needed.
"""
from collections.abc import Sequence

import numpy as np


def Figure(**kwargs):  # noqa: N802 (matplotlib's class, imported on first use)
  from matplotlib.figure import Figure as MatplotlibFigure  # ~0.4 s: kept out of `import jaxmodels`.
  return MatplotlibFigure(**kwargs)


def plot_history(history, path: str, metrics: Sequence[str] = ('loss', 'accuracy')) -> str:
  """Train and eval curves (one panel per metric) against the step. history: a `History`."""
  fig = Figure(figsize=(5 * len(metrics), 4), layout='constrained')
  for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
    for split, style in (('train', '-'), ('eval', 'o-')):
      steps, values = history.series(split, metric)
      if len(steps):
        ax.plot(steps, values, style, label=split, markersize=3)
    ax.set(title=metric, xlabel='step')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.savefig(path, dpi=100)
  return path


def plot_confusion_matrix(confusion, class_names: Sequence[str], path: str) -> str:
  """Row-normalised confusion matrix (rows: true class) annotated with counts."""
  confusion = np.asarray(confusion)
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n), layout='constrained')
  ax = fig.subplots()
  image = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set(xticks=range(n), yticks=range(n), xlabel='predicted', ylabel='true', title='confusion matrix')
  ax.set_xticklabels(class_names, rotation=45, ha='right')
  ax.set_yticklabels(class_names)
  if n <= 20:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, int(confusion[i, j]), ha='center', va='center', fontsize=7,
                color='white' if rates[i, j] > 0.5 else 'black')
  fig.savefig(path, dpi=100)
  return path


def plot_predictions(images, labels, predictions, class_names: Sequence[str], path: str,
                     max_images: int = 25) -> str:
  """Grid of images titled 'pred (true)'; wrong predictions in red. images (N, H, W, C)."""
  images = np.asarray(images)[:max_images]
  cols = int(np.ceil(np.sqrt(len(images))))
  rows = int(np.ceil(len(images) / cols))
  fig = Figure(figsize=(1.8 * cols, 1.9 * rows), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes:
    ax.axis('off')
  for ax, image, label, pred in zip(axes, images, labels, predictions):
    image = image.astype(np.float32)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
    ax.set_title(f'{class_names[pred]}\n({class_names[label]})', fontsize=8,
                 color='black' if pred == label else 'red')
  fig.savefig(path, dpi=100)
  return path
