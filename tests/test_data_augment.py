"""Augmentations against numpy (and scipy) references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as sp_ndimage

from jaxmodels.data import (DataError, affine_transform, make_augment,
                            random_affine, random_crop, random_flip)


def _batch(b=8, h=7, w=7, c=2, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (b, h, w, c)).astype(
      np.float32)


def _key(seed=0):
  return jax.random.PRNGKey(seed)


def test_flip_is_numpy_mirror_per_example():
  images = _batch(b=32)
  out = np.asarray(random_flip(_key(), images))
  flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images)]
  kept = [np.array_equal(o, x) for o, x in zip(out, images)]
  assert all(f != k for f, k in zip(flipped, kept))  # Exactly one holds.
  assert 0 < sum(flipped) < 32  # p=0.5 draws differ across the batch.
  np.testing.assert_array_equal(random_flip(_key(), images, p=1.0),
                                images[:, :, ::-1])
  np.testing.assert_array_equal(random_flip(_key(), images, p=0.0), images)


def test_crop_outputs_are_windows_of_padded_input():
  images, pad = _batch(b=16, h=5, w=6), 2
  out = np.asarray(jax.jit(random_crop, static_argnums=2)(_key(), images, pad))
  assert out.shape == images.shape and out.dtype == np.float32
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  corners = []
  for o, p in zip(out, padded):
    matches = [(dy, dx) for dy in range(2 * pad + 1)
               for dx in range(2 * pad + 1)
               if np.array_equal(o, p[dy:dy + 5, dx:dx + 6])]
    assert matches
    corners.append(matches[0])
  assert len(set(corners)) > 1  # Each example draws its own window.


@pytest.mark.parametrize('angle,k', [(90., 1), (180., 2), (-90., 3)])
def test_affine_rotation_matches_rot90(angle, k):
  image = _batch(b=1, h=6, w=6)[0]
  out = affine_transform(image, angle, jnp.zeros(2), 1.0, 0.0)
  np.testing.assert_allclose(out, np.rot90(image, k, axes=(0, 1)), atol=1e-5)


def test_affine_integer_shift_is_zero_filled_roll():
  image = _batch(b=1, h=6, w=5)[0]
  out = affine_transform(image, 0.0, jnp.array([2.0, -1.0]), 1.0, 0.0)
  expected = np.zeros_like(image)
  expected[2:, :-1] = image[:-2, 1:]
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_affine_identity_and_fill():
  image = _batch(b=1)[0]
  out = affine_transform(image, 0.0, jnp.zeros(2), 1.0, 0.0)
  np.testing.assert_array_equal(out, image)
  out = affine_transform(image, 0.0, jnp.array([0.0, 100.0]), 1.0, -3.0)
  np.testing.assert_array_equal(out, np.full_like(image, -3.0))


def test_affine_general_matches_scipy():
  image = _batch(b=1, h=9, w=8, c=1)[0, ..., 0]
  angle, shift, zoom = 23.0, np.array([1.3, -0.7]), 1.4
  theta = np.deg2rad(angle)
  # scipy maps output coords o to input coords matrix @ o + offset.
  inverse_rotation = np.array([[np.cos(theta), np.sin(theta)],
                               [-np.sin(theta), np.cos(theta)]])
  matrix = inverse_rotation / zoom
  centre = (np.array(image.shape) - 1) / 2
  offset = centre - matrix @ (centre + shift)
  # 'grid-constant' also blends edge pixels with the fill, as jax does.
  expected = sp_ndimage.affine_transform(image, matrix, offset, order=1,
                                         mode='grid-constant', cval=0.0)
  out = affine_transform(image[..., None], angle, jnp.asarray(shift), zoom,
                         0.0)
  np.testing.assert_allclose(out[..., 0], expected, atol=1e-5)


def test_zoom_above_one_enlarges_content():
  image = np.zeros((9, 9, 1), np.float32)
  image[3:6, 3:6] = 1.0  # 3x3 square around the centre.
  out = affine_transform(image, 0.0, jnp.zeros(2), 2.0, 0.0)
  out = np.asarray(out)[..., 0]
  # Output y samples input 4 + (y - 4) / 2: rows 2..6 land inside the square.
  np.testing.assert_allclose(out[2:7, 2:7], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[1, 4], 0.5, atol=1e-6)
  assert out.sum() == pytest.approx(25 + 4 * 5 * 0.5 + 4 * 0.25)


def test_random_affine_properties():
  images = _batch(b=6)
  images[1] = images[0]  # Equal inputs must still get their own draw.
  fn = jax.jit(lambda rng, x: random_affine(
      rng, x, max_rotation_deg=30., max_shift=0.2, max_zoom=0.3))
  out = np.asarray(fn(_key(0), images))
  assert out.shape == images.shape and out.dtype == np.float32
  assert out.min() >= min(0.0, images.min()) - 1e-6
  assert out.max() <= images.max() + 1e-6
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(out, fn(_key(0), images))  # Same bits.
  assert not np.allclose(out, fn(_key(1), images))
  same = random_affine(_key(0), images)  # Nothing enabled: identity.
  np.testing.assert_array_equal(same, images)


def test_make_augment_identity_and_validation():
  images = _batch()
  np.testing.assert_array_equal(make_augment()(_key(), images), images)
  with pytest.raises(DataError, match='zoom'):
    make_augment(zoom=1.5)


def test_make_augment_in_jit_and_scan():
  images = jnp.asarray(_batch(b=4, h=8, w=8, c=3))
  augment = make_augment(flip=True, crop_padding=2, rotation=10., shift=0.1,
                         zoom=0.1)

  @jax.jit
  def run(rng):
    def step(carry, key):
      out = augment(key, images)
      return carry + out.sum(), out
    return jax.lax.scan(step, 0.0, jax.random.split(rng, 3))

  total, outs = run(_key(0))
  assert outs.shape == (3,) + images.shape and outs.dtype == jnp.float32
  assert np.isfinite(float(total))
  assert not np.allclose(outs[0], outs[1])  # Fresh draw per step.
  np.testing.assert_array_equal(outs, run(_key(0))[1])
  assert float(outs.min()) >= 0.0 and float(outs.max()) <= 1.0 + 1e-6
