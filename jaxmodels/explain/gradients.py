"""Gradient attributions of a classifier's class score to its inputs: vanilla gradients,
integrated gradients (Sundararajan et al. 2017) and SmoothGrad (Smilkov et al. 2017).

Each takes `fn(inputs (B, ...)) -> scores (B, K)` (any differentiable batch function: a
model's logits, or logits of raw pixels through the input normalisation), `inputs` (N, ...)
float and `targets` (N,) int (the class explained for each example), and returns float32
attributions of the inputs' shape. Per-example gradients are `jax.grad` under `vmap`; the
examples, and the many points of a path or a noise cloud, are walked in chunks with
`lax.map` / `lax.scan`, so memory is that of `batch_size` forward-backward passes,
whatever the number of examples or steps. All are pure and jit-able (`fn` static).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.errors import InputError

INTEGRATION_RULES = ('gauss_legendre', 'riemann_middle', 'trapezoid', 'uniform')


def class_score_grad(fn: Callable) -> Callable:
  """grad(x (...), target ()) -> d fn(x[None])[0, target] / dx, for one example."""
  return jax.grad(lambda x, target: fn(x[None])[0, target].astype(jnp.float32))


def input_gradients(fn: Callable, inputs, targets, *, batch_size: int = 32) -> jax.Array:
  """Vanilla gradients (N, ...): d score_target / d input, `batch_size` examples at a time."""
  grad = class_score_grad(fn)
  return jax.lax.map(lambda a: grad(*a), (jnp.asarray(inputs, jnp.float32), targets),
                     batch_size=min(batch_size, len(inputs)))


def integration_rule(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(alphas (steps,), weights (steps,)) with sum_k w_k g(alpha_k) ~ integral_0^1 g.

  gauss_legendre: Gauss-Legendre nodes on [0, 1] (Captum's default). riemann_middle: the
  midpoints of `steps` equal cells. trapezoid: linspace(0, 1, steps), half weight at both
  ends. uniform: linspace(0, 1, steps), each weighted 1/steps -- the rule of PAIR's
  `saliency` package (`IntegratedGradients`), off by O(1/steps) as both ends count fully.
  The first two never evaluate the end points, where a ReLU network often sits on a kink
  (a zero baseline through zero biases gives a zero gradient there).
  """
  if rule not in INTEGRATION_RULES:
    raise InputError(f'rule must be one of {", ".join(INTEGRATION_RULES)}, got {rule!r}')
  if steps < (2 if rule in ('trapezoid', 'uniform') else 1):
    raise InputError(f'steps={steps} is too few for the {rule} rule')
  if rule == 'trapezoid':
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
  elif rule == 'riemann_middle':
    alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
  elif rule == 'gauss_legendre':
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
  else:
    alphas, weights = np.linspace(0.0, 1.0, steps), np.full(steps, 1.0 / steps)
  return alphas.astype(np.float32), weights.astype(np.float32)


def _chunked_sum(fn: Callable, xs, chunk: int):
  """sum_i fn(xs[i]) over the leading axis, `chunk` at a time under vmap (a scan over chunks:
  memory of one chunk). The last chunk is padded; its padding entries are masked out."""
  n = jax.tree.leaves(xs)[0].shape[0]
  chunk = min(chunk, n)
  pad = -n % chunk
  xs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]), xs)
  valid = jnp.arange(n + pad) < n
  xs, valid = jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[1:]), (xs, valid))
  first = jax.eval_shape(jax.vmap(fn), jax.tree.map(lambda x: x[0], xs))
  zero = jax.tree.map(lambda s: jnp.zeros(s.shape[1:], s.dtype), first)

  def body(total, chunk_xs):
    x, keep = chunk_xs
    masked = lambda v: jnp.where(keep.reshape(-1, *[1] * (v.ndim - 1)), v, 0).sum(0)
    return jax.tree.map(lambda t, v: t + masked(v), total, jax.vmap(fn)(x)), None
  return jax.lax.scan(body, zero, (xs, valid))[0]


def integrated_gradients(fn: Callable, inputs, targets, baselines=None, *, steps: int = 64,
                         rule: str = 'gauss_legendre', batch_size: int = 32) -> jax.Array:
  """Integrated gradients (N, ...): (x - x') * integral_0^1 grad f(x' + a (x - x')) da,
  the integral by `rule` at `steps` points (`integration_rule`), `batch_size` points at a
  time. baselines: x' (N, ...) or None for zeros. Completeness: the attributions sum to
  f(x) - f(x') up to the rule's error."""
  inputs = jnp.asarray(inputs, jnp.float32)
  baselines = jnp.zeros_like(inputs) if baselines is None else jnp.asarray(baselines, jnp.float32)
  alphas, weights = integration_rule(rule, steps)
  grad = class_score_grad(fn)

  def one(args):
    x, baseline, target = args
    path_grad = lambda aw: aw[1] * grad(baseline + aw[0] * (x - baseline), target)
    return (x - baseline) * _chunked_sum(path_grad, (alphas, weights), batch_size)

  return jax.lax.map(one, (inputs, baselines, targets))


def smoothgrad(fn: Callable, inputs, targets, rng: jax.Array, *, samples: int = 25,
               noise: float = 0.15, magnitude: bool = True, batch_size: int = 32) -> jax.Array:
  """SmoothGrad (N, ...): the mean over `samples` draws of g(x + e) (or g(x + e)^2 with
  `magnitude`, as the `saliency` package does), g the vanilla gradient and
  e ~ N(0, s^2), s = noise * (max x - min x) per example. Example i draws its noise from
  `jax.random.split(rng, N)[i]` as `s * normal(key, (samples, *x.shape))`."""
  inputs = jnp.asarray(inputs, jnp.float32)
  grad = class_score_grad(fn)

  def one(args):
    x, target, key = args
    scale = noise * (jnp.max(x) - jnp.min(x))
    draws = scale * jax.random.normal(key, (samples, *x.shape), jnp.float32)
    g = lambda e: grad(x + e, target) ** 2 if magnitude else grad(x + e, target)
    return _chunked_sum(g, draws, batch_size) / samples

  return jax.lax.map(one, (inputs, targets, jax.random.split(rng, len(inputs))))
