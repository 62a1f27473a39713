"""Layers written for speed on XLA:CPU, with the numerics of their Flax / lax counterparts:
`max_pool` exactly, `conv_few_inputs` and `conv_pool` (the two with a bias between) to float
rounding (a different summation order); `Dropout` with nn.Dropout's distribution from a
quarter of its random bits (other masks, the same keep rate to 1/65536); `dense_product` with
nn.Dense's values and, to rounding, its gradients; `attention` with those of
`jax.nn.dot_product_attention` to rounding."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.models import bf16_compute


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


def _first_max_grads(parts: list[jax.Array], g: jax.Array,
                     top: jax.Array | None = None) -> list[jax.Array]:
  """g (B, h, w, C) shared out over a pool's window positions (`_window_slices` parts): each
  window's gradient goes to its first maximum (row-major), as XLA's select-and-scatter gives
  it, in fused elementwise passes instead of a scatter.

  By default the maximum is taken again from the parts it is compared with: XLA may
  recompute them inside these loops (a batch-norm output) with other rounding than the
  forward pass's. `top`, the forward pass's maximum, may be given instead where the parts
  are recomputed bit for bit (a chain of multiply-adds: XLA:CPU neither contracts nor
  reassociates them); then the last position takes the gradient no earlier one took, and
  the loops recompute 9 parts instead of 16 (a 2x2 window)."""
  from_forward = top is not None
  if not from_forward:
    top = functools.reduce(jnp.maximum, parts)
  taken = jnp.zeros(top.shape, bool)
  grads = []
  for q, part in enumerate(parts):
    first = ~taken if from_forward and q == len(parts) - 1 else (part == top) & ~taken
    taken = taken | first
    grads.append(jnp.where(first, g, 0).astype(g.dtype))
  return grads


def _unpool(grads: list[jax.Array], window: int, shape: tuple[int, ...]) -> jax.Array:
  """Per-position gradients (`_first_max_grads`) in the pool input's (B, H, W, C) layout;
  the rows and columns the pool dropped get zeros."""
  batch, height, width, channels = shape
  h, w = grads[0].shape[1:3]
  # (B, h, window_i, w, window_j, C) is the input's layout: a reshape, no transpose.
  rows = [jnp.stack(grads[i * window:(i + 1) * window], axis=3) for i in range(window)]
  dx = jnp.stack(rows, axis=2).reshape(batch, h * window, w * window, channels)
  return jnp.pad(dx, ((0, 0), (0, height - h * window), (0, width - w * window), (0, 0)))


def _max_pool_2d_bwd(window, x, g):
  return (_unpool(_first_max_grads(_window_slices(x, window), g), window, x.shape),)


_max_pool_2d.defvjp(_max_pool_2d_fwd, _max_pool_2d_bwd)


def _kernel_views(x: jax.Array, kh: int, kw: int, stride: int = 1,
                  offset: tuple[int, int] = (0, 0),
                  out_hw: tuple[int, int] | None = None) -> list[jax.Array]:
  """The kh*kw views of x (B, H, W, C) that a stride-1 VALID convolution's kernel positions
  (i, j) meet, in that order, at the output positions (stride * I + oi, stride * J + oj) for
  I < h, J < w; by default at every output position."""
  h, w = out_hw or (x.shape[1] - kh + 1, x.shape[2] - kw + 1)
  oi, oj = offset
  return [x[:, oi + i:oi + i + stride * (h - 1) + 1:stride,
            oj + j:oj + j + stride * (w - 1) + 1:stride]
          for i in range(kh) for j in range(kw)]


def _lax_conv(x, kernel, precision=None):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', precision=precision,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _kernel_grad(views: list[jax.Array], g: jax.Array, precision) -> jax.Array:
  """The kernel gradient (kh * kw, C, O) of a convolution: its kh * kw input views (B, h, w, C)
  (`_kernel_views`) times the output gradient g (B, h, w, O), summed over (B, h, w). The
  views are stacked on a new leading axis, each one copy in place. For `conv_pool`'s
  quarter-size views, concatenating them on the channel axis (im2col, interleaved writes)
  made the SmallCNN's step 1.05x-1.1x slower; for `conv_few_inputs`' full-size ones on RGB
  images it is the stack that is slower (0.97x), so that one keeps im2col."""
  return jnp.einsum('pbhwc,bhwo->pco', jnp.stack(views), g, precision=precision)


def _conv_input_grad(x, kernel, g, precision):
  """The convolution's input gradient (XLA drops it when x is the data: a first layer)."""
  return jax.vjp(lambda x: _lax_conv(x, kernel, precision), x)[1](g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_few_inputs(x, kernel, precision):
  kh, kw, channels, _ = kernel.shape
  terms = (view[..., c:c + 1] * kernel[p // kw, p % kw, c]
           for p, view in enumerate(_kernel_views(x, kh, kw)) for c in range(channels))
  return functools.reduce(jnp.add, terms)


def _conv_few_inputs_fwd(x, kernel, precision):
  return _conv_few_inputs(x, kernel, precision), (x, kernel)


def _conv_few_inputs_bwd(precision, residuals, g):
  x, kernel = residuals
  kh, kw, channels, features = kernel.shape
  # The kernel gradient as one matrix product of the image patches (im2col) with g: XLA:CPU
  # runs it several times faster than the convolution autodiff gives for it.
  patches = jnp.concatenate(_kernel_views(x, kh, kw), axis=-1).reshape(-1, kh * kw * channels)
  dkernel = jnp.dot(patches.T, g.reshape(-1, features), precision=precision)
  return _conv_input_grad(x, kernel, g, precision), dkernel.reshape(kernel.shape)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_pool(x, kernel, bias, window, precision, recomputes_exactly):
  return _max_pool_2d(_conv_few_inputs(x, kernel, precision) + bias, window)


def _conv_pool_fwd(x, kernel, bias, window, precision, recomputes_exactly):
  y = _conv_pool(x, kernel, bias, window, precision, recomputes_exactly)
  return y, (x, kernel, bias, y)


def _conv_pool_bwd(window, precision, recomputes_exactly, residuals, g):
  x, kernel, bias, y = residuals
  kh, kw = kernel.shape[:2]
  # The kernel gradient is summed over the window positions: the gradient each position
  # gets, times the image patches under the outputs at that position. The full-size gradient
  # of the convolution's output is never written for it.
  z = _conv_few_inputs(x, kernel, precision) + bias  # Recomputed inside the masks' loops.
  grads = _first_max_grads(_window_slices(z, window), g, top=y if recomputes_exactly else None)
  dkernel = dbias = 0.0
  for q, dz in enumerate(grads):
    views = _kernel_views(x, kh, kw, window, divmod(q, window), dz.shape[1:3])
    dkernel = dkernel + _kernel_grad(views, dz, precision)
    dbias = dbias + dz.sum((0, 1, 2))
  dx = _conv_input_grad(x, kernel, _unpool(grads, window, z.shape), precision)
  return dx, dkernel.reshape(kernel.shape), jnp.reshape(dbias, bias.shape)


_conv_pool.defvjp(_conv_pool_fwd, _conv_pool_bwd)


def conv_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, window: int,
              precision=None, *, recomputes_exactly: bool = False) -> jax.Array:
  """`max_pool(conv_few_inputs(x, kernel) + bias, window)`, equal in value and in gradient
  (to float rounding); x (B, H, W, C), kernel (kh, kw, C, O), bias (O,) or None ->
  (B, (H - kh + 1) // window, (W - kw + 1) // window, O).

  The gradient skips the full-size gradient of the convolution's output: each window
  position's share of the pool's gradient meets the image patches under those positions
  directly (the SmallCNN's train step: 1.14x at batch 64, 1.12x at batch 512 on a 2-core
  CPU).

  recomputes_exactly: the backend recomputes the convolution in the backward pass with the
  forward pass's bits (XLA:CPU, which neither contracts nor reassociates the multiply-adds),
  so the pool's maximum is taken from the forward output (`_first_max_grads`: 9 of 16
  quarter-size recomputations for a 2x2 window). False, the safe choice: the maximum is
  taken again, for backends that may round the recomputation differently.
  """
  if bias is None:
    bias = jnp.zeros(kernel.shape[-1:], kernel.dtype)
  return _conv_pool(x, kernel, bias, window, precision, recomputes_exactly)


def _dense(x, kernel, precision):
  """x (M, K) @ kernel (K, N)."""
  return jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())), precision=precision)


def _is_tall(rows: int, fan_in: int, fan_out: int) -> bool:
  """More rows than the kernel has on either side: a sequence model's layers, not a
  classifier's head over a few examples."""
  return rows >= max(fan_in, fan_out)


def dense_product_pays(rows: int, fan_in: int, fan_out: int) -> bool:
  """Whether `dense_product`'s gradients beat XLA:CPU's own for a product of this size: a
  widening layer's (its input gradient) or a tall one's (its kernel gradient)."""
  return fan_out > fan_in or _is_tall(rows, fan_in, fan_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_product(x, kernel, precision):
  return _dense(x, kernel, precision)


def _dense_product_fwd(x, kernel, precision):
  return _dense(x, kernel, precision), (x, kernel)


def _dense_product_bwd(precision, residuals, g):
  x, kernel = residuals
  barrier = jax.lax.optimization_barrier  # Keeps a transpose a copy of its own (see below).
  fan_in, fan_out = kernel.shape
  if fan_out > fan_in:  # Read across, the kernel's long axis ran at half speed.
    x_grad = _dense(g, barrier(kernel.T), precision)
  else:
    x_grad = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())), precision=precision)
  # x^T g. For tall x and g (more rows than the kernel has on either side), as XLA:CPU's
  # matrix library takes it: two row-major operands, the narrower of x and g copied
  # transposed. Folded into the product, the transpose sends it to a generic kernel at half
  # speed; for a few rows (a classifier's head) the copies cost more than they save. Of
  # equal widths x is copied: the query, key and value projections share it, so XLA makes
  # one copy for the three.
  if not _is_tall(x.shape[0], fan_in, fan_out):
    kernel_grad = jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())), precision=precision)
  elif fan_in > fan_out:  # Transposed back in a copy: the optimiser reads it several times.
    kernel_grad = barrier(barrier(_dense(barrier(g.T), x, precision)).T)
  else:
    kernel_grad = _dense(barrier(x.T), g, precision)
  return x_grad, kernel_grad


_dense_product.defvjp(_dense_product_fwd, _dense_product_bwd)


def dense_product(x: jax.Array, kernel: jax.Array, precision=None, num_in: int = 1) -> jax.Array:
  """x (..., *in) contracted with kernel (*in, *out), whose `num_in` leading axes are the
  fan-in, -> (..., *out): what `nn.Dense` (num_in 1) and the Transformers' head projections
  compute, with gradients taken the way XLA:CPU runs them fastest. The same values; the
  gradients to float rounding.

  The kernel's gradient x^T g is computed from a transposed copy of the narrower of x and g
  (XLA contracts the two row-major operands in a generic kernel at about half the speed),
  and a widening layer's input gradient against a transposed copy of the kernel (2x faster:
  a Transformer MLP's input, 256 -> 1024 in lm.py's GPT). lm.py's train step at batch 32,
  same-process A/B on a 2-core AMD EPYC: 632 ms with no dense layer so, 600 with the
  widening ones (their input gradient only), 565 with every one (both gradients)."""
  fan_in = math.prod(kernel.shape[:num_in])
  out_shape = x.shape[:x.ndim - num_in] + kernel.shape[num_in:]
  out = _dense_product(x.reshape(-1, fan_in), kernel.reshape(fan_in, -1), precision)
  return out.reshape(out_shape)


def _bf16_matmul(a, b, out_dtype):
  """a (B, H, M, K) @ b (B, H, K, N) of bf16 operands (`bf16_compute.dot_general`)."""
  return bf16_compute.dot_general(a, b, (((3,), (2,)), ((0, 1), (0, 1))), out_dtype=out_dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool,
              block: int = 64) -> jax.Array:
  """`jax.nn.dot_product_attention(q, k, v, is_causal=causal)` (q, k, v (B, T, H, D)
  float32 or bfloat16, no mask) written for XLA:CPU: the same values and gradients to float
  rounding.

  The queries are scaled before their product (D values each rather than T); the products
  run on (B, H, T, D) operands; the causal mask is a constant added to the logits; and
  causal queries go in blocks of `block` that meet only the keys up to their block's end,
  which skips a quarter of the products and of the softmax at T = 128. lm.py's GPT: 21 ms
  against 32-40 ms a layer for attention's forward and backward at batch 32. bfloat16 runs
  as `jax.nn.dot_product_attention` does it (float32 logits, scaled after their product,
  and softmax; bf16 weights), its products through `bf16_compute.dot_general`.
  """
  length, head_dim = q.shape[1], q.shape[3]
  scale = np.float32(1 / np.sqrt(head_dim))
  if q.dtype == jnp.bfloat16:
    logits_of = lambda q, k: _bf16_matmul(q, k, jnp.float32) * scale
    weighted = lambda probs, v: _bf16_matmul(probs.astype(v.dtype), v, v.dtype)
  else:
    q = q * scale
    logits_of = weighted = jnp.matmul
  q, k, v = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
  if not causal:
    return weighted(jax.nn.softmax(logits_of(q, k), axis=-1), v).transpose(0, 2, 1, 3)
  bias = np.where(np.tril(np.ones((length, length), bool)), 0, -np.inf).astype(np.float32)
  outs = []
  for start in range(0, length, block):
    end = min(start + block, length)
    logits = logits_of(q[:, :, start:end], k[..., :end]) + bias[start:end, :end]
    outs.append(weighted(jax.nn.softmax(logits, axis=-1), v[:, :, :end]))
  return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
  return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry_2x32(key: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Threefry-2x32 hash (20 rounds) of the counter pairs (x1, x2), uint32 arrays, under
  key (2,) uint32: the bits of `jax.extend.random.threefry_2x32`, whose first half of
  counts is x1 and second half x2. Written out in lax ops: jax lowers its own to a loop of
  5 iterations on CPU, each a pass over memory; unrolled, XLA:CPU fuses the 20 rounds into
  one loop (lm.py's train step: 1-2 % faster at batch 32, 9 dropout masks)."""
  keys = (key[0], key[1], key[0] ^ key[1] ^ np.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x1, x2 = x1 + keys[0], x2 + keys[1]
  for i in range(5):
    for bits in rotations[i % 2]:
      x1 = x1 + x2
      x2 = _rotate_left(x2, bits) ^ x1
    x1 = x1 + keys[(i + 1) % 3]
    x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def keep_mask(rng: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
  """A bool mask of `shape`, each entry True with probability `keep_prob` (to 1/65536),
  independently, from 16 random bits per entry.

  `jax.random.bernoulli` draws a float32 from one threefry hash per entry; here one hash
  (two 32-bit words) gives four entries, a quarter of the hashing, which dominates dropout
  on CPU. rng: a raw or typed threefry key; the same key gives the same mask on every
  backend: the bits of `jax.extend.random.threefry_2x32(key, iota)`, split in 16-bit
  halves."""
  size = max(1, int(np.prod(shape)))
  pairs = -(-size // 4)  # Each hash gives two 32-bit words, each word two 16-bit draws.
  key = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  counts = jax.lax.iota(jnp.uint32, pairs)
  # The barrier keeps the hash one pass of its own: fused into the mask's consumers, XLA
  # computed it once per 16-bit draw and per word of the pair, four times over.
  words = jax.lax.optimization_barrier(threefry_2x32(key, counts, counts + np.uint32(pairs)))
  bits = jnp.concatenate(words)
  draws = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(-1)[:size].reshape(shape)
  threshold = min(round(keep_prob * 65536), 65535)
  return draws < jnp.uint16(threshold)


class Dropout(nn.Module):
  """`nn.Dropout` (inputs / keep_prob where kept, 0 elsewhere; the 'dropout' rng) with its
  mask from `keep_mask`: the same distribution to 1/65536 of the keep rate, a quarter of the
  random bits. Reproducible from the step's key like any Flax dropout."""
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None):
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    mask = keep_mask(self.make_rng('dropout'), keep_prob, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
