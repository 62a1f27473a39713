"""Pictures of explanations: heat maps laid over their images (PNG), and texts whose tokens
are coloured by their heat (PNG and HTML). Built on `matplotlib.figure.Figure` directly,
like `report.plots`: no display needed."""
import html
from collections.abc import Sequence

import numpy as np

from jaxmodels.report.plots import Figure


def scale_heat(heat, percentile: float = 99.0) -> np.ndarray:
  """Heat maps (N, H, W) >= 0 scaled to 0..1 per map, clipped at its `percentile` (as the
  `saliency` package shows them: a few extreme pixels do not wash out the rest)."""
  heat = np.asarray(heat, np.float32)
  top = np.percentile(heat.reshape(len(heat), -1), percentile, axis=1)[:, None, None]
  return np.clip(heat / np.maximum(top, 1e-12), 0.0, 1.0)


def overlay(image, heat, dim: float = 0.45, cmap: str = 'inferno') -> np.ndarray:
  """(H, W, 3) float RGB in 0..1: the image in dimmed grey, with `heat` (H, W) in 0..1 in
  colour over it, opaque where the heat is high. image: (H, W, C) any range."""
  from matplotlib import colormaps
  image = np.asarray(image, np.float32)
  grey = image.mean(-1)
  grey = dim * (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)
  weight = heat[..., None]
  return (1 - weight) * grey[..., None] + weight * colormaps[cmap](heat)[..., :3]


def plot_image_maps(images, heat, titles: Sequence[str], path: str, *, method: str = '',
                    max_images: int = 32) -> str:
  """A grid of (image | heat overlay) pairs, each titled. images (N, H, W, C); heat (N, H, W)
  >= 0 (scaled here with `scale_heat`). The grid is one picture drawn once (a montage):
  one matplotlib axes per image would cost more than the maps on a small run."""
  images, heat = np.asarray(images, np.float32)[:max_images], scale_heat(heat[:max_images])
  count, height, width = heat.shape
  pairs_per_row = min(4, count)
  rows = -(-count // pairs_per_row)
  gap, band = max(1, width // 10), max(4, height // 4)  # Pixels between tiles; title band.
  cell_h, cell_w = band + height + gap, 2 * width + 3 * gap
  canvas = np.ones((rows * cell_h, pairs_per_row * cell_w, 3), np.float32)
  for i, (image, h) in enumerate(zip(images, heat)):
    top, left = (i // pairs_per_row) * cell_h + band, (i % pairs_per_row) * cell_w + gap
    shown = image / 255.0 if image.shape[-1] == 3 else np.repeat(
        (image - image.min()) / max(float(image.max() - image.min()), 1e-6), 3, axis=-1)
    canvas[top:top + height, left:left + width] = shown
    canvas[top:top + height, left + width + gap:left + 2 * width + gap] = overlay(image, h)
  title_h = 0.3 if method else 0.05
  fig = Figure(figsize=(3.2 * pairs_per_row, 1.75 * rows + title_h))
  ax = fig.add_axes((0.0, 0.0, 1.0, 1.75 * rows / (1.75 * rows + title_h)))
  ax.imshow(canvas, interpolation='nearest', aspect='auto')
  ax.axis('off')
  for i, title in enumerate(titles[:count]):
    x = (i % pairs_per_row) * cell_w + gap + width / 2
    ax.text(x, (i // pairs_per_row) * cell_h + band - 0.5, title, ha='center', va='bottom',
            fontsize=8, clip_on=False)
  if method:
    fig.suptitle(method.replace('_', ' '), fontsize=10, y=1 - 0.05 / (1.75 * rows + title_h))
  fig.savefig(path, dpi=100)
  return path


def _colour(value: float, signed: bool):
  from matplotlib import colormaps
  return colormaps['RdBu_r'](0.5 + 0.5 * value) if signed else colormaps['Reds'](value)


def plot_token_heat(tokens: Sequence[Sequence[str]], heat, titles: Sequence[str], path: str,
                    line_chars: int = 100) -> str:
  """Each text as its tokens on coloured boxes: red for heat toward the class, blue against
  it (signed heat), or shades of red (heat >= 0); scaled per text by its largest |heat|."""
  signed = any(np.min(h[:len(t)]) < 0 for t, h in zip(tokens, heat) if len(t))
  lines = []  # (text, [(column, token, value)])
  for words, h, title in zip(tokens, heat, titles):
    h = np.asarray(h[:len(words)], np.float32)
    h = h / max(float(np.abs(h).max()), 1e-12) if len(h) else h
    lines += [(title, []), ('', [])]  # The title on a line of its own, the tokens below.
    column = 0
    for word, value in zip(words, h):
      if column and column + len(word) > line_chars:
        lines.append(('', []))
        column = 0
      lines[-1][1].append((column, word, float(value)))
      column += len(word) + 1
    lines.append(('', []))
  width, line_height = 0.09 * line_chars + 0.4, 0.26
  fig = Figure(figsize=(width, line_height * len(lines) + 0.2))
  for row, (title, placed) in enumerate(lines):
    y = 1 - (row + 0.8) * line_height / (line_height * len(lines) + 0.2)
    if title:
      fig.text(0.2 / width, y, title, fontsize=9, weight='bold', family='monospace')
    for column, word, value in placed:
      fig.text((0.2 + 0.09 * column) / width, y, word, fontsize=9, family='monospace',
               color='white' if abs(value) > 0.6 else 'black',  # Legible on dark boxes.
               bbox={'facecolor': _colour(value, signed), 'edgecolor': 'none', 'pad': 1.0})
  fig.savefig(path, dpi=100)
  return path


def token_heat_html(tokens: Sequence[Sequence[str]], heat, titles: Sequence[str],
                    path: str) -> str:
  """The same as `plot_token_heat`, as an HTML page (each token's heat in its tooltip)."""
  signed = any(np.min(h[:len(t)]) < 0 for t, h in zip(tokens, heat) if len(t))
  parts = ['<html><body style="font-family: monospace; max-width: 60em">']
  for words, h, title in zip(tokens, heat, titles):
    h = np.asarray(h[:len(words)], np.float32)
    scaled = h / max(float(np.abs(h).max()), 1e-12) if len(h) else h
    spans = []
    for word, value, raw in zip(words, scaled, h):
      r, g, b, _ = (int(255 * c) for c in _colour(float(value), signed))
      spans.append(f'<span title="{raw:.4g}" style="background: rgb({r},{g},{b})">'
                   f'{html.escape(word)}</span>')
    parts.append(f'<p><b>{html.escape(title)}</b><br>{" ".join(spans)}</p>')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(parts + ['</body></html>']))
  return path
