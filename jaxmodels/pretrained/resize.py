"""Position-table resizing for a ViT used at another image size: the patch grid of
learned positions is resized bicubically, as PyTorch's `interpolate(mode='bicubic',
align_corners=False)` does (cubic convolution with A = -0.75, border taps clamped), which
is what transformers' `interpolate_pos_encoding` applies."""
import math

import numpy as np

_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(n, 4) weights of the taps at floor-1 .. floor+2 for fractional offsets t (n,)."""
  near = lambda x: ((_A + 2) * x - (_A + 3)) * x * x + 1           # |x| <= 1
  far = lambda x: ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A    # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) float64 M with resized = M @ signal along one axis."""
  scale = size_in / size_out
  source = (np.arange(size_out) + 0.5) * scale - 0.5  # Half-pixel centres, not clamped.
  floor = np.floor(source)
  weights = _cubic_weights(source - floor)
  matrix = np.zeros((size_out, size_in))
  for tap in range(4):
    index = np.clip(floor.astype(int) - 1 + tap, 0, size_in - 1)
    np.add.at(matrix, (np.arange(size_out), index), weights[:, tap])
  return matrix


def resize_grid(table: np.ndarray, num_tokens: int, prefix: int = 1) -> np.ndarray:
  """A position table (1, prefix + g*g, E) -> (1, num_tokens, E): the `prefix` ([CLS])
  rows as they are, the square g x g grid of the rest resized to the square grid of
  num_tokens - prefix. ValueError if either grid is not square."""
  grid_in, grid_out = (math.isqrt(n - prefix) for n in (table.shape[1], num_tokens))
  if grid_in ** 2 != table.shape[1] - prefix or grid_out ** 2 != num_tokens - prefix:
    raise ValueError(f'cannot resize a position table of {table.shape[1]} tokens to '
                     f'{num_tokens}: both must be {prefix} + a square grid')
  embed = table.shape[-1]
  grid = table[0, prefix:].reshape(grid_in, grid_in, embed).astype(np.float64)
  rows, cols = bicubic_matrix(grid_in, grid_out), bicubic_matrix(grid_in, grid_out)
  resized = np.einsum('ij,jkc,lk->ilc', rows, grid, cols).reshape(1, -1, embed)
  return np.concatenate([table[:, :prefix], resized.astype(table.dtype)], axis=1)
