"""Layers written for speed on XLA:CPU, with the numerics of their Flax / lax counterparts:
`max_pool` exactly, `conv_few_inputs` and `conv_pool` (the two with a bias between) to float
rounding (a different summation order)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _window_slices(x: jax.Array, window: int) -> list[jax.Array]:
  """The window*window strided views of x (B, H, W, C), in row-major window order."""
  h, w = x.shape[1] // window, x.shape[2] // window
  return [x[:, i:h * window:window, j:w * window:window]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_2d(x, window):
  # The forward pass as reduce_window: XLA:CPU runs it as one library call, where the
  # maximum of strided slices, fused with the flattening reshape after it, ran 2x slower.
  return nn.max_pool(x, (window, window), strides=(window, window))


def _max_pool_2d_fwd(x, window):
  return _max_pool_2d(x, window), x


def _max_pool_2d_bwd(window, x, g):
  # Each window's gradient goes to its first maximum (row-major), as XLA's
  # select-and-scatter gives it: one fused elementwise pass instead of a scatter. The
  # maximum is taken again from the same slices it is compared with: XLA may recompute x
  # (a batch-norm output, say) inside this fusion, with other rounding than the forward's.
  parts = _window_slices(x, window)
  y = functools.reduce(jnp.maximum, parts)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window):
    cols = []
    for part in parts[i * window:(i + 1) * window]:
      first = (part == y) & ~taken
      taken = taken | first
      cols.append(jnp.where(first, g, 0).astype(g.dtype))
    rows.append(jnp.stack(cols, axis=3))  # (B, h, w, window_j, C)
  # (B, h, window_i, w, window_j, C) is the input's layout: a reshape, no transpose.
  batch, height, width, channels = x.shape
  h, w = y.shape[1], y.shape[2]
  dx = jnp.stack(rows, axis=2).reshape(batch, h * window, w * window, channels)
  dx = jnp.pad(dx, ((0, 0), (0, height - h * window), (0, width - w * window), (0, 0)))
  return (dx,)


_max_pool_2d.defvjp(_max_pool_2d_fwd, _max_pool_2d_bwd)


def _shifted_views(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
  """The kh*kw views x[:, i:i + H', j:j + W'] of x (B, H, W, C), in a kernel's (i, j) order."""
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return [x[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


def _lax_conv(x, kernel, precision=None):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', precision=precision,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_few_inputs(x, kernel, precision):
  kh, kw, channels, _ = kernel.shape
  terms = (view[..., c:c + 1] * kernel[p // kw, p % kw, c]
           for p, view in enumerate(_shifted_views(x, kh, kw)) for c in range(channels))
  return functools.reduce(jnp.add, terms)


def _conv_few_inputs_fwd(x, kernel, precision):
  return _conv_few_inputs(x, kernel, precision), (x, kernel)


def _conv_few_inputs_bwd(precision, residuals, g):
  x, kernel = residuals
  kh, kw, channels, features = kernel.shape
  # The kernel gradient as one matrix product of the image patches (im2col) with g: XLA:CPU
  # runs it several times faster than the convolution autodiff gives for it.
  patches = jnp.concatenate(_shifted_views(x, kh, kw), axis=-1).reshape(-1, kh * kw * channels)
  dkernel = jnp.dot(patches.T, g.reshape(-1, features), precision=precision)
  dx = jax.vjp(lambda x: _lax_conv(x, kernel, precision), x)[1](g)[0]  # Unused for images.
  return dx, dkernel.reshape(kernel.shape)


_conv_few_inputs.defvjp(_conv_few_inputs_fwd, _conv_few_inputs_bwd)


def conv_few_inputs(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
  """A stride-1 VALID convolution (B, H, W, C) x (kh, kw, C, O) for small kh * kw * C
  (a first layer on images): equal to `lax.conv_general_dilated` (NHWC, HWIO) to float
  rounding, values and gradients.

  XLA:CPU's convolution has little to work with when each output sums 9 or 27 products:
  as kh * kw * C broadcast multiply-adds, the forward pass is one fused loop (5x faster
  on the SmallCNN's conv, 3.1 against 15.8 us per image), and the kernel gradient is one
  matrix product of the image patches with the output gradient (the SmallCNN's
  conv-pool-ReLU, forward and kernel gradient: 34 against 63 us per image).
  """
  return _conv_few_inputs(x, kernel, precision)


def max_pool(x: jax.Array, window: int = 2) -> jax.Array:
  """Non-overlapping max-pool (B, H, W, C) -> (B, H // window, W // window, C).

  Equal to `nn.max_pool(x, (window, window), strides=(window, window))` (VALID:
  trailing rows and columns are dropped) in value and gradient, ties included.
  XLA:CPU runs `nn.max_pool`'s gradient (select-and-scatter) 5-20x slower than this
  elementwise formulation, and slower than the convolution before it. Pooling
  commutes with ReLU, so `relu(max_pool(x))` equals `max_pool(relu(x))` on a
  quarter of the elements.
  """
  if x.ndim != 4:
    return nn.max_pool(x, (window,) * (x.ndim - 2), strides=(window,) * (x.ndim - 2))
  return _max_pool_2d(x, window)


def _strided_patches(x: jax.Array, kh: int, kw: int, window: int, offset: tuple[int, int],
                     out_hw: tuple[int, int]) -> jax.Array:
  """(B, h, w, kh * kw * C): the patch under output position (window * I + oi, window * J + oj)
  of a stride-1 VALID convolution of x, for I < h, J < w."""
  (oi, oj), (h, w) = offset, out_hw
  return jnp.concatenate([x[:, oi + i:oi + i + window * (h - 1) + 1:window,
                            oj + j:oj + j + window * (w - 1) + 1:window]
                          for i in range(kh) for j in range(kw)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_pool(x, kernel, bias, window, precision):
  return _max_pool_2d(_conv_few_inputs(x, kernel, precision) + bias, window)


def _conv_pool_fwd(x, kernel, bias, window, precision):
  return _conv_pool(x, kernel, bias, window, precision), (x, kernel, bias)


def _conv_pool_bwd(window, precision, residuals, g):
  x, kernel, bias = residuals
  kh, kw, channels, features = kernel.shape
  batch, h, w, _ = g.shape
  # The pool's gradient goes to each window's first maximum (as in `_max_pool_2d_bwd`), and
  # the kernel gradient is summed per window position: the gradients of the positions at
  # offset (i, j) in their windows, times the patches under those positions. The full-size
  # gradient of the convolution's output is never written.
  z = _conv_few_inputs(x, kernel, precision) + bias  # Recomputed inside the masks' loops.
  parts = _window_slices(z, window)
  top = functools.reduce(jnp.maximum, parts)
  taken = jnp.zeros(top.shape, bool)
  dkernel, dbias, dz_parts = 0.0, 0.0, []
  for q, part in enumerate(parts):
    first = (part == top) & ~taken
    taken = taken | first
    dz = jnp.where(first, g, 0).astype(g.dtype)
    patches = _strided_patches(x, kh, kw, window, divmod(q, window), (h, w))
    dkernel = dkernel + jnp.dot(patches.reshape(-1, kh * kw * channels).T,
                                dz.reshape(-1, features), precision=precision)
    dbias = dbias + dz.sum((0, 1, 2))
    dz_parts.append(dz)
  # The input's gradient (XLA drops it when x is the data, as for a first layer).
  dz = jnp.stack([jnp.stack(dz_parts[i * window:(i + 1) * window], axis=3)
                  for i in range(window)], axis=2).reshape(batch, h * window, w * window, features)
  out_h, out_w = z.shape[1:3]
  dz = jnp.pad(dz, ((0, 0), (0, out_h - h * window), (0, out_w - w * window), (0, 0)))
  dx = jax.vjp(lambda x: _lax_conv(x, kernel, precision), x)[1](dz)[0]
  return dx, dkernel.reshape(kernel.shape), jnp.reshape(dbias, bias.shape)


_conv_pool.defvjp(_conv_pool_fwd, _conv_pool_bwd)


def conv_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, window: int,
              precision=None) -> jax.Array:
  """`max_pool(conv_few_inputs(x, kernel) + bias, window)`, equal in value and in gradient
  (to float rounding); bias (O,) or None.

  The gradient skips the full-size gradient of the convolution's output: each window
  position's share of the pool's gradient meets the image patches under those positions
  directly (the SmallCNN's step: 1.08x at batch 64, 1.14x at batch 512 on a 2-core CPU).
  """
  if bias is None:
    bias = jnp.zeros(kernel.shape[-1:], kernel.dtype)
  return _conv_pool(x, kernel, bias, window, precision)
