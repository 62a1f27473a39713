"""Magnitude pruning and structured channel pruning, checked against numpy: the schedule's
formula, the exact number of zeros per layer (and globally, the smallest magnitudes), zeros
that stay zero under AdamW with weight decay, and channel pruning that equals the full model
with those channels switched off while XLA counts fewer FLOPs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels import compress, models
from jaxmodels.compress import measure
from jaxmodels.compress.channels import prune_channels

RNG = np.random.default_rng(0)
PARAMS = {'a': {'kernel': RNG.normal(size=(5, 7)).astype(np.float32),
                'bias': RNG.normal(size=(7,)).astype(np.float32)},
          'b': {'kernel': RNG.normal(size=(3, 3, 2, 4)).astype(np.float32) * 3}}


def test_polynomial_schedule_is_the_cubic_formula():
  steps = np.arange(0, 40)
  got = compress.polynomial_sparsity(steps, 0.8, 10, 30)
  progress = np.clip((steps - 10) / 20, 0, 1)
  np.testing.assert_allclose(got, 0.8 * (1 - (1 - progress) ** 3), rtol=0, atol=1e-15)
  assert got[30] == 0.8 and got[5] == 0.0


def _train(scope, steps, target=0.6, begin=2, end=22, every=5):
  tx = compress.magnitude_pruning(optax.adamw(0.05, weight_decay=0.1), target, begin, end,
                                  every_steps=every, scope=scope)
  params = jax.tree.map(jnp.asarray, PARAMS)
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for step in range(1, steps + 1):
    grads = jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), p.dtype), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((step, jax.tree.map(np.asarray, params)))
  return history


@pytest.mark.parametrize('scope', ['layer', 'global'])
def test_reached_sparsity_equals_the_schedule_and_zeros_stay_zero_under_adamw(scope):
  begin, end, every = 2, 22, 5
  history = _train(scope, end + 100, begin=begin, end=end, every=every)
  mask_steps = [2, 7, 12, 17, 22]
  for step, params in history:
    if step > end:
      break
    last = max([t for t in mask_steps if t <= step], default=None)
    target = 0.0 if last is None else compress.polynomial_sparsity(last, 0.6, begin, end)
    kernels = [params['a']['kernel'], params['b']['kernel']]
    zeros = [int(np.sum(k == 0)) for k in kernels]
    if scope == 'layer':
      assert zeros == [int(np.round(target * k.size)) for k in kernels], step
    else:
      assert sum(zeros) == int(np.round(target * sum(k.size for k in kernels))), step
    assert np.all(params['a']['bias'] != 0)  # Biases are never pruned.
  final_mask = [params['a']['kernel'] == 0, params['b']['kernel'] == 0]
  assert compress.sparsity_report(params)['overall'] == pytest.approx(
      round(0.6 * 107) / 107 if scope == 'global' else (round(0.6 * 35) + round(0.6 * 72)) / 107)
  # 100 AdamW steps (weight decay, random gradients) after the end: the same zeros, exactly.
  for _, params in history[end:]:
    np.testing.assert_array_equal(params['a']['kernel'] == 0, final_mask[0])
    np.testing.assert_array_equal(params['b']['kernel'] == 0, final_mask[1])
  assert len(history) - end == 100


def test_global_masks_prune_the_smallest_magnitudes_over_all_kernels():
  params = jax.tree.map(jnp.asarray, PARAMS)
  masks = compress.magnitude_masks(params, [40], 'global')
  magnitudes = np.concatenate([np.abs(PARAMS['a']['kernel']).ravel(),
                               np.abs(PARAMS['b']['kernel']).ravel()])
  threshold = np.sort(magnitudes)[40]
  for name in ('a', 'b'):
    kernel = np.abs(PARAMS[name]['kernel'])
    np.testing.assert_array_equal(np.asarray(masks[name]['kernel']), kernel >= threshold)
  assert np.all(np.asarray(masks['a']['bias']))


def test_channel_pruning_equals_switched_off_channels_with_fewer_flops():
  module = models.MODELS['three_conv_cnn'](widths=(8, 12, 12), dense=16, batch_norm=True)
  images = RNG.normal(size=(4, 28, 28, 1)).astype(np.float32)
  variables = jax.tree.map(np.asarray, dict(nn.meta.unbox(
      module.init(jax.random.key(0), images[:1], train=False))))
  # Non-trivial batch-norm statistics and gains, so the ranking uses them.
  for i in range(3):
    stats = variables['batch_stats'][f'BatchNorm_{i}']
    stats['mean'] = RNG.normal(size=stats['mean'].shape).astype(np.float32)
    stats['var'] = RNG.uniform(0.5, 2, size=stats['var'].shape).astype(np.float32)
    norm = variables['params'][f'BatchNorm_{i}']
    norm['scale'] = RNG.uniform(0.2, 2, size=norm['scale'].shape).astype(np.float32)
    norm['bias'] = RNG.normal(size=norm['bias'].shape).astype(np.float32) * 0.1
  arguments, pruned = prune_channels('three_conv_cnn', dict(widths=(8, 12, 12), dense=16,
                                                            batch_norm=True),
                                     variables, 0.5, (28, 28, 1))
  assert arguments['widths'] == [4, 6, 6]
  small = models.MODELS['three_conv_cnn'](**arguments)
  # Reference: the full model with the dropped channels' batch-norm output forced to 0 (gain
  # and bias 0), chosen here by numpy: the smallest L1 * |gamma| / sqrt(var + eps).
  switched = jax.tree.map(np.copy, variables)
  for i in range(3):
    kernel = variables['params'][f'Conv_{i}']['kernel']
    norm, stats = variables['params'][f'BatchNorm_{i}'], variables['batch_stats'][f'BatchNorm_{i}']
    score = np.abs(kernel).sum((0, 1, 2)) * np.abs(norm['scale']) / np.sqrt(stats['var'] + 1e-5)
    dropped = np.argsort(score)[:kernel.shape[-1] // 2]
    switched['params'][f'BatchNorm_{i}']['scale'][dropped] = 0
    switched['params'][f'BatchNorm_{i}']['bias'][dropped] = 0
  np.testing.assert_allclose(small.apply(pruned, images), module.apply(switched, images),
                             atol=1e-5, rtol=1e-5)
  flops = [measure.forward_flops(lambda v, x, m=m: m.apply(v, x), v, images[:1])
           for m, v in ((module, variables), (small, pruned))]
  assert flops[1] < 0.4 * flops[0]  # Halving both sides of each conv: about a quarter.
