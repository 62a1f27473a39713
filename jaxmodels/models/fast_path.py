"""A jaxpr-level rewrite that gives models written with Flax's standard layers the fast
max-pool gradient of `layers.max_pool`, the fast first-layer convolution of
`layers.conv_few_inputs` and the two together of `layers.conv_pool`.

XLA differentiates a max-pool (`reduce_window_max`) with select-and-scatter, which
XLA:CPU runs 5-20x slower than an elementwise formulation, and slower than the
convolution before it. `rewrite_for_cpu(fn)` traces `fn` (a model's apply), and
evaluates its jaxpr again with every non-overlapping 2-D max-pool (window equal to its
stride, no padding: what `nn.max_pool(x, (k, k), strides=(k, k))` gives) replaced by
`layers.max_pool`, whose custom VJP has the same values and gradients, ties included.
Differentiating the result therefore never meets select-and-scatter. A `jax.nn.relu`
whose result only feeds such a pool is moved after it (max-pool commutes with the ReLU,
and the ReLU's zero derivative at 0 keeps the gradients equal, ties included), so the
ReLU and its gradient touch a quarter of the values. A float32 NHWC convolution with
stride 1 and at most MAX_PATCH products per output (a first layer on grey or RGB
images) is computed by `layers.conv_few_inputs`: equal to float rounding, values and
gradients. Such a convolution whose output (plus a bias, through a ReLU or not) only feeds
a pool becomes one `layers.conv_pool`, whose gradient never writes the full-size gradient
of the convolution's output. Pools and convolutions inside other higher-order primitives
(remat, scan, custom derivatives) are left as they are; `layers.max_pool` is the one
custom-derivative call recognised, as a pool. A float32 dense product (x contracted with a
kernel's leading axes: `nn.Dense`, a Transformer's projections, a tied output layer) that
widens (kernel (K, N), N > K) or is tall (at least max(K, N) rows: a sequence model's) is
computed by `layers.dense_product`, whose gradients XLA:CPU runs up to 2x faster: the same
values, the gradients to float rounding. The Transformers' unmasked
float32 or bfloat16 attention (`transformer.dot_product_attention`, a named call) is
computed by `layers.attention`: the values and gradients to float rounding. A product of two
bfloat16 operands is computed by `bf16_compute.dot_general`, which XLA:CPU runs on the CPU's
bf16 instructions, and an operand that a bfloat16 add, subtract or multiply broadcasts goes
through `bf16_compute.broadcast_to`, whose gradient is summed in float32: the same values,
gradients rounded as PyTorch's autocast rounds them.
"""
import collections
import functools
import math

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from jaxmodels.models import bf16_compute
from jaxmodels.models.layers import (attention, conv_few_inputs, conv_pool, dense_product,
                                     dense_product_pays, max_pool)
from jaxmodels.models.transformer import causal_dot_product_attention, dot_product_attention

_JIT_PRIMITIVES = ('jit', 'pjit', 'closed_call', 'core_call')


def _source(eqn) -> str:
  """'name at path:line' of the function a custom-derivative call wraps, or ''."""
  info = getattr(eqn.params['call_jaxpr'].jaxpr, 'debug_info', None)
  return getattr(info, 'func_src_info', None) or ''


def _pool_window(eqn) -> int | None:
  """k for a reduce_window_max over (1, k, k, 1) windows with stride k and no padding, or
  for `layers.max_pool` (whose call holds one)."""
  if eqn.primitive.name == 'custom_vjp_call' and _source(eqn).startswith('_max_pool_2d at '):
    inner = eqn.params['call_jaxpr'].jaxpr.eqns
    return _pool_window(inner[0]) if len(inner) == 1 else None
  if eqn.primitive.name != 'reduce_window_max' or eqn.invars[0].aval.ndim != 4:
    return None
  p = eqn.params
  window, strides = tuple(p['window_dimensions']), tuple(p['window_strides'])
  plain = (all(d == 1 for d in (*p['base_dilation'], *p['window_dilation'])) and
           all(lo == hi == 0 for lo, hi in p['padding']))
  square = window[0] == window[3] == 1 and window[1] == window[2] > 1
  return window[1] if plain and square and window == strides else None


MAX_PATCH = 27  # kh * kw * C up to a 3x3 RGB patch: where the broadcast formulation wins.


def _few_input_conv(eqn) -> bool:
  """Whether `eqn` is a float32 NHWC/HWIO 2-D convolution with stride 1, no dilation, no
  groups, non-negative padding and at most MAX_PATCH products per output."""
  if eqn.primitive.name != 'conv_general_dilated':
    return False
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  if lhs.ndim != 4 or not lhs.dtype == rhs.dtype == jnp.float32:
    return False
  p = eqn.params
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  return (p['dimension_numbers'] == nhwc and p['feature_group_count'] == 1 and
          p['batch_group_count'] == 1 and p['preferred_element_type'] in (None, jnp.float32) and
          all(d == 1 for d in (*p['window_strides'], *p['lhs_dilation'], *p['rhs_dilation'])) and
          all(lo >= 0 and hi >= 0 for lo, hi in p['padding']) and
          rhs.shape[0] * rhs.shape[1] * rhs.shape[2] <= MAX_PATCH)


def _dense_layer(eqn) -> int | None:
  """For a float32 dense product, x (..., *in) contracted with a kernel's leading axes (*in,
  *out) as `nn.Dense`, a Transformer's projections and a tied output layer (x @ E.T, E
  transposed first) compute it: the number of fan-in axes; else None."""
  if eqn.primitive.name != 'dot_general':
    return None
  x, kernel = (v.aval for v in eqn.invars)
  (x_axes, kernel_axes), batch_axes = eqn.params['dimension_numbers']
  num_in = len(kernel_axes)
  dense = (not any(batch_axes) and 0 < num_in < x.ndim and
           tuple(kernel_axes) == tuple(range(num_in)) and
           tuple(x_axes) == tuple(range(x.ndim - num_in, x.ndim)))
  float32 = (x.dtype == kernel.dtype == jnp.float32 and
             eqn.params.get('preferred_element_type') in (None, jnp.float32))
  if not (dense and float32):
    return None
  sizes = (math.prod(x.shape[:x.ndim - num_in]), math.prod(kernel.shape[:num_in]),
           math.prod(kernel.shape[num_in:]))
  return num_in if dense_product_pays(*sizes) else None


# The named calls whose jaxpr equations carry these names: causal or not.
_ATTENTION_CALLS = {dot_product_attention.__name__: False,
                    causal_dot_product_attention.__name__: True}


def _attention_call(eqn) -> bool | None:
  """For a call of `transformer.dot_product_attention` (or its causal twin) on float32 or
  bfloat16 self-attention: whether it is causal; else None."""
  if eqn.primitive.name not in _JIT_PRIMITIVES or len(eqn.invars) != 3:
    return None
  causal = _ATTENTION_CALLS.get(eqn.params.get('name'))
  q, k, v = (v.aval for v in eqn.invars)
  if causal is None or q.ndim != 4 or not q.shape == k.shape == v.shape:
    return None
  if not q.dtype == k.dtype == v.dtype or q.dtype not in (jnp.float32, jnp.bfloat16):
    return None
  return causal


def _bf16_product(eqn) -> bool:
  """Whether `eqn` is a dot_general of two bfloat16 operands with a bf16 or float32
  result."""
  if eqn.primitive.name != 'dot_general':
    return False
  x, y = (v.aval for v in eqn.invars)
  return (x.dtype == y.dtype == jnp.bfloat16 and
          eqn.params.get('preferred_element_type') in (None, jnp.bfloat16, jnp.float32))


def _bf16_broadcasting(eqn) -> bool:
  """Whether `eqn` is a bfloat16 add, subtract or multiply that broadcasts an operand (a
  bias or a scale of shape (1, 1, E) added to (B, T, E)), whose gradient would be summed in
  bf16."""
  if eqn.primitive.name not in ('add', 'sub', 'mul'):
    return False
  out = eqn.outvars[0].aval
  return out.dtype == jnp.bfloat16 and any(
      isinstance(v, jex.Var) and v.aval.shape != out.shape for v in eqn.invars)


def _is_jax_relu(eqn) -> bool:
  """Whether `eqn` is a call of `jax.nn.relu` (whose derivative at 0 is 0)."""
  if eqn.primitive.name != 'custom_jvp_call':
    return False
  source = _source(eqn)
  return source.startswith('relu at ') and 'nn' in source.replace('\\', '/').split('/')


class _DeferredConv:
  """A few-input convolution (plus its bias, once an add supplies one), kept until it is
  known whether a pool consumes it: then `layers.conv_pool` computes the two together.
  x holds the convolution's padding as zeros."""

  def __init__(self, x, kernel, precision, bias=None):
    self.x, self.kernel, self.precision, self.bias = x, kernel, precision, bias
    self._value = None

  @classmethod
  def of(cls, eqn, x, kernel):
    """`eqn` (a `_few_input_conv`) of x and kernel."""
    x = jnp.pad(x, ((0, 0), *eqn.params['padding'], (0, 0)))
    return cls(x, kernel, eqn.params['precision'])

  def with_bias(self, bias):
    return _DeferredConv(self.x, self.kernel, self.precision, bias)

  def value(self):
    if self._value is None:
      y = conv_few_inputs(self.x, self.kernel, self.precision)
      self._value = y if self.bias is None else y + self.bias
    return self._value

  def pooled(self, window: int, recomputes_exactly: bool):
    return conv_pool(self.x, self.kernel, self.bias, window, self.precision,
                     recomputes_exactly=recomputes_exactly)


class _DeferredRelu:
  """A ReLU's input, kept until it is known whether a pool consumes the result."""

  def __init__(self, x):
    self.x = x
    self._value = None

  def value(self):
    if self._value is None:
      x = self.x.value() if isinstance(self.x, _DeferredConv) else self.x
      self._value = jax.nn.relu(x)
    return self._value


_Deferred = (_DeferredConv, _DeferredRelu)


def _pooled(x, window: int, recomputes_exactly: bool):
  """The max-pool of x, a value or a deferred convolution and/or ReLU."""
  if isinstance(x, _DeferredRelu):
    return jax.nn.relu(_pooled(x.x, window, recomputes_exactly))
  if isinstance(x, _DeferredConv):
    return x.pooled(window, recomputes_exactly)
  return max_pool(x, window)


def _bias_of(conv, other):
  """`other` as the (O,) bias of the deferred `conv`, if `conv + other` is its bias add."""
  if not isinstance(conv, _DeferredConv) or conv.bias is not None or isinstance(other, _Deferred):
    return None
  features = conv.kernel.shape[-1]
  shape, dtype = getattr(other, 'shape', ()), getattr(other, 'dtype', None)
  if dtype == jnp.float32 and shape in ((features,), (1, 1, 1, features)):
    return jnp.reshape(other, features)
  return None


def _bind(eqn, invals):
  """`eqn`'s primitive applied to invals, as the jaxpr applied it."""
  with eqn.ctx.manager:
    return eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))


def _evaluate(jaxpr, consts, args, recomputes_exactly: bool):
  """`jax.core.eval_jaxpr`, with the pools swapped and jitted sub-functions inlined."""
  env = {}
  # A convolution, bias add or ReLU is deferred only when one equation uses its result.
  uses = collections.Counter(v for eqn in jaxpr.eqns for v in eqn.invars
                             if not isinstance(v, jex.Literal))
  uses.update(v for v in jaxpr.outvars if not isinstance(v, jex.Literal))
  single_use = lambda eqn: uses[eqn.outvars[0]] == 1

  def read(v, deferred_ok=False):
    value = v.val if isinstance(v, jex.Literal) else env[v]
    return value.value() if isinstance(value, _Deferred) and not deferred_ok else value

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    window = _pool_window(eqn)
    if window:
      env[eqn.outvars[0]] = _pooled(read(eqn.invars[0], deferred_ok=True), window,
                                    recomputes_exactly)
      continue
    if _few_input_conv(eqn):
      conv = _DeferredConv.of(eqn, *(read(v) for v in eqn.invars))
      env[eqn.outvars[0]] = conv if single_use(eqn) else conv.value()
      continue
    causal = _attention_call(eqn)
    if causal is not None:
      env[eqn.outvars[0]] = attention(*(read(v) for v in eqn.invars), causal=causal)
      continue
    num_in = _dense_layer(eqn)
    if num_in:
      x, kernel = (read(v) for v in eqn.invars)
      env[eqn.outvars[0]] = dense_product(x, kernel, eqn.params['precision'], num_in)
      continue
    if _bf16_product(eqn):
      x, y = (read(v) for v in eqn.invars)
      env[eqn.outvars[0]] = bf16_compute.dot_general(
          x, y, eqn.params['dimension_numbers'], eqn.params['precision'],
          out_dtype=eqn.outvars[0].aval.dtype)
      continue
    if _bf16_broadcasting(eqn):
      shape = eqn.outvars[0].aval.shape
      invals = [bf16_compute.broadcast_to(read(v), shape)
                if isinstance(v, jex.Var) and v.aval.shape != shape else read(v)
                for v in eqn.invars]
      env[eqn.outvars[0]] = _bind(eqn, invals)
      continue
    if eqn.primitive.name == 'add' and single_use(eqn):
      a, b = (read(v, deferred_ok=True) for v in eqn.invars)
      conv, bias = (a, _bias_of(a, b)) if isinstance(a, _DeferredConv) else (b, _bias_of(b, a))
      if bias is not None:
        env[eqn.outvars[0]] = conv.with_bias(bias)
        continue
    if _is_jax_relu(eqn):
      x = read(eqn.invars[0], deferred_ok=True)
      if isinstance(x, _Deferred) and not (isinstance(x, _DeferredConv) and single_use(eqn)):
        x = x.value()
      env[eqn.outvars[0]] = _DeferredRelu(x)
      continue
    if eqn.primitive.name in _JIT_PRIMITIVES:
      inner = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
      invals = [read(v, deferred_ok=True) for v in eqn.invars]
      outs = _evaluate(inner.jaxpr, inner.consts, invals, recomputes_exactly)
    else:
      outs = _bind(eqn, [read(v) for v in eqn.invars])
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v, deferred_ok=True) for v in jaxpr.outvars]


def rewrite_for_cpu(fn, *, recomputes_exactly: bool = False):
  """`fn` with its non-overlapping 2-D max-pools computed by `layers.max_pool` and its
  few-input convolutions by `layers.conv_few_inputs` (see the module doc): the same values
  and gradients (to rounding for the convolutions), without select-and-scatter. Arguments that
  are not arrays (e.g. `train=True`) stay static. `fn` is traced once: its jaxpr is then
  evaluated, with or without substitutions. recomputes_exactly: passed to every
  `layers.conv_pool` (True where the backend recomputes a convolution bit for bit, XLA:CPU).
  A function this returned is returned as it is."""
  if getattr(fn, 'rewritten_for_cpu', False):
    return fn

  @functools.wraps(fn)
  def rewritten(*args, **kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if hasattr(leaf, 'shape')]

    def flat_fn(*values):
      filled = list(leaves)
      for i, value in zip(dynamic, values):
        filled[i] = value
      call_args, call_kwargs = jax.tree.unflatten(treedef, filled)
      return fn(*call_args, **call_kwargs)

    values = [leaves[i] for i in dynamic]
    closed, shapes = jax.make_jaxpr(flat_fn, return_shape=True)(*values)
    outs = _evaluate(closed.jaxpr, closed.consts, values, recomputes_exactly)
    outs = [out.value() if isinstance(out, _Deferred) else out for out in outs]
    return jax.tree.unflatten(jax.tree.structure(shapes), outs)

  rewritten.rewritten_for_cpu = True
  return rewritten
