"""bfloat16 compute on XLA:CPU: matrix products on the CPU's bf16 instructions, and the
gradients of broadcasts summed in float32.

XLA:CPU's matrix-product library takes bf16 operands only with a float32 result. A product
whose result is bf16 (what `nn.Dense(dtype=jnp.bfloat16)` computes, and its gradients) is
converted to float32 operands first and runs at float32 speed; asked for a float32 result
it runs 2x faster on a CPU with AVX512-BF16 (a 2-core AMD EPYC: 380-415 against 170-190
GFLOP/s at a GPT MLP's shapes). `dot_general` asks for float32 and rounds the result, in its
forward pass and in the two products of its gradient.

Numerics: the forward value is the plain bf16 product's (both accumulate in float32 and
round once). The gradients are PyTorch autocast's: the incoming gradient is rounded to bf16
before its products, and each product is rounded to bf16 once.

A bf16 bias or scale broadcast in an add or multiply has the sum of the result's gradient
over the broadcast axes as its gradient: `lax.reduce_sum` in bf16, which XLA:CPU computes
as a tree of windowed sums, 17 ms for a GPT MLP bias at batch 32 (a tenth of the step for
four layers). `broadcast_to`'s gradient sums in float32 and rounds once, as PyTorch's does:
0.6 ms.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

def _product(x, y, dimension_numbers, precision, out_dtype):
  """x . y in float32, rounded to out_dtype."""
  out = jax.lax.dot_general(x, y, dimension_numbers, precision=precision,
                            preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def _lhs_gradient(g, y, dimension_numbers, x_ndim, precision, x_dtype):
  """The gradient for x of x . y, from g (the result's gradient): g contracted with y over
  y's free axes, then laid out as x. (jax's own transpose rule would ask that product for
  a bf16 result, which XLA:CPU runs at float32 speed.)"""
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  x_free = [i for i in range(x_ndim) if i not in x_contract and i not in x_batch]
  y_free = [j for j in range(y.ndim) if j not in y_contract and j not in y_batch]
  batch = len(x_batch)
  g_y_free = tuple(range(batch + len(x_free), g.ndim))
  out = _product(g, y, ((g_y_free, tuple(y_free)), (tuple(range(batch)), tuple(y_batch))),
                 precision, x_dtype)
  # out's axes: the batch axes, x's free axes, then y's contracted axes in y's order, each
  # of which stands for the x axis it was contracted with.
  x_axes = [*x_batch, *x_free, *(x_contract[y_contract.index(j)] for j in sorted(y_contract))]
  return out.transpose(np.argsort(x_axes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dot_general(x, y, dimension_numbers, precision, out_dtype):
  return _product(x, y, dimension_numbers, precision, out_dtype)


def _dot_general_fwd(x, y, dimension_numbers, precision, out_dtype):
  return _product(x, y, dimension_numbers, precision, out_dtype), (x, y)


def _dot_general_bwd(dimension_numbers, precision, out_dtype, residuals, g):
  x, y = residuals
  g = g.astype(jnp.bfloat16)
  (x_contract, y_contract), (x_batch, y_batch) = dimension_numbers
  dx = _lhs_gradient(g, y, dimension_numbers, x.ndim, precision, x.dtype)
  # For y, the same with the operands swapped: g's axes reordered to (batch, y free, x free).
  batch = len(x_batch)
  x_free = x.ndim - len(x_contract) - batch
  g_swapped = g.transpose((*range(batch), *range(batch + x_free, g.ndim),
                           *range(batch, batch + x_free)))
  dy = _lhs_gradient(g_swapped, x, ((y_contract, x_contract), (y_batch, x_batch)), y.ndim,
                     precision, y.dtype)
  return dx, dy


_dot_general.defvjp(_dot_general_fwd, _dot_general_bwd)


def dot_general(x: jax.Array, y: jax.Array, dimension_numbers: jax.lax.DotDimensionNumbers,
                precision=None, out_dtype=jnp.bfloat16) -> jax.Array:
  """`jax.lax.dot_general(x, y, dimension_numbers)` of bf16 x and y, accumulated in float32
  and rounded to out_dtype (bf16, or float32 to keep the float32 result, as attention's
  logits do), with gradients whose products do the same (see the module doc)."""
  return _dot_general(x, y, dimension_numbers, precision, jnp.dtype(out_dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_to(x, x_shape, shape):
  return jnp.broadcast_to(x, shape)


def _broadcast_to_fwd(x, x_shape, shape):
  return jnp.broadcast_to(x, shape), None


def _broadcast_to_bwd(x_shape, shape, _, g):
  lead = len(shape) - len(x_shape)
  axes = (*range(lead), *(lead + i for i, size in enumerate(x_shape)
                          if size == 1 and shape[lead + i] != 1))
  return (jnp.sum(g, axes, dtype=jnp.float32).reshape(x_shape).astype(g.dtype),)


_broadcast_to.defvjp(_broadcast_to_fwd, _broadcast_to_bwd)


def broadcast_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """`jnp.broadcast_to(x, shape)` whose gradient is summed in float32 and rounded to x's
  dtype (see the module doc)."""
  return _broadcast_to(x, tuple(x.shape), tuple(shape))
