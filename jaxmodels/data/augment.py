"""Random image augmentations on batches, as pure jit-able functions.

Each `fn(rng, images)` takes float32 `(B, H, W, C)` and returns the same shape
and dtype, with an independent random draw per example. Padding and fill
values are in the units of `images` (0 is the mean after `normalize`).
"""

import functools

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from jaxmodels.errors import DataError


def random_flip(rng, images, p: float = 0.5):
  """Mirrors each image left-right with probability `p`."""
  flip = jax.random.bernoulli(rng, p, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_crop(rng, images, padding: int = 4):
  """Zero-pads `padding` pixels per side, then crops a random H x W window."""
  if padding <= 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  corners = jax.random.randint(rng, (b, 2), 0, 2 * padding + 1)

  def crop(image, corner):
    return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, corners)


def affine_transform(image, angle_deg, shift_yx, zoom, fill=0.0):
  """Zooms, rotates, then shifts one image about its centre (bilinear).

  Args:
    image: float `(H, W, C)`.
    angle_deg: rotation; positive is counter-clockwise as displayed, so 90
      matches `np.rot90(image)` on a square image.
    shift_yx: `(2,)` shift in pixels; positive moves the content down/right.
    zoom: scale factor; > 1 enlarges the content.
    fill: value of pixels that come from outside the image; edge pixels blend
      with it (like scipy's mode='grid-constant').

  Returns:
    `(H, W, C)`, dtype of `image`.
  """
  h, w = image.shape[:2]
  theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                        jnp.arange(w, dtype=jnp.float32), indexing='ij')
  # Inverse map: for each output pixel, where to sample the input.
  u = (ys - cy - shift_yx[0]) / zoom
  v = (xs - cx - shift_yx[1]) / zoom
  coords = [cy + cos * u + sin * v, cx - sin * u + cos * v]

  def resample(channel):
    return ndimage.map_coordinates(channel, coords, order=1, mode='constant',
                                   cval=fill)

  out = jax.vmap(resample, in_axes=-1, out_axes=-1)(image)
  return out.astype(image.dtype)


def random_affine(rng, images, *, max_rotation_deg: float = 0.0,
                  max_shift: float = 0.0, max_zoom: float = 0.0,
                  fill: float = 0.0):
  """Random rotation, shift and zoom per image, in one bilinear resample.

  Args:
    rng: PRNG key.
    images: float32 `(B, H, W, C)`.
    max_rotation_deg: angle drawn from `[-max, max]` degrees.
    max_shift: shift drawn from `[-max, max]` times the height / width.
    max_zoom: zoom drawn from `[1 - max, 1 + max]`; must be < 1.
    fill: value of pixels that come from outside the image.
  """
  _check_zoom(max_zoom)
  if not (max_rotation_deg or max_shift or max_zoom):
    return images
  b, h, w = images.shape[:3]
  rng_angle, rng_shift, rng_zoom = jax.random.split(rng, 3)
  angle = jax.random.uniform(rng_angle, (b,), minval=-max_rotation_deg,
                             maxval=max_rotation_deg)
  shift = jax.random.uniform(rng_shift, (b, 2), minval=-max_shift,
                             maxval=max_shift) * jnp.array([h, w], jnp.float32)
  zoom = jax.random.uniform(rng_zoom, (b,), minval=1.0 - max_zoom,
                            maxval=1.0 + max_zoom)
  transform = functools.partial(affine_transform, fill=fill)
  return jax.vmap(transform)(images, angle, shift, zoom)


def _check_zoom(max_zoom):
  if not 0.0 <= max_zoom < 1.0:
    raise DataError(f'max zoom {max_zoom} must lie in [0, 1): zoom is drawn '
                    'from [1 - max_zoom, 1 + max_zoom]')


def make_augment(*, flip: bool = False, crop_padding: int = 0,
                 rotation: float = 0.0, shift: float = 0.0, zoom: float = 0.0,
                 fill: float = 0.0):
  """Composes the enabled augmentations: affine, then crop, then flip.

  Args:
    flip: random horizontal flip.
    crop_padding: random crop after zero-padding by this many pixels.
    rotation: max rotation in degrees.
    shift: max shift as a fraction of the image size.
    zoom: max zoom deviation from 1.
    fill: value for pixels from outside the image in the affine resample.

  Returns:
    `fn(rng, images) -> images`, float32 `(B, H, W, C)`; the identity when
    nothing is enabled. Usable inside `jax.jit` and `lax.scan`.
  """
  _check_zoom(zoom)
  ops = []
  if rotation or shift or zoom:
    ops.append(functools.partial(random_affine, max_rotation_deg=rotation,
                                 max_shift=shift, max_zoom=zoom, fill=fill))
  if crop_padding:
    ops.append(functools.partial(random_crop, padding=crop_padding))
  if flip:
    ops.append(random_flip)

  def augment(rng, images):
    if not ops:
      return images
    for op, key in zip(ops, jax.random.split(rng, len(ops))):
      images = op(key, images)
    return images

  return augment
