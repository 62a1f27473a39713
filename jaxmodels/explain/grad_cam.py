"""Grad-CAM (Selvaraju et al. 2017): where a CNN's feature maps support the class.

With A (h, w, C) a layer's output and y the class score, the map is
ReLU(sum_c a_c A[..., c]) with a_c the spatial mean of dy/dA[..., c] -- the `saliency`
package's `GradCam` before its resizing. The layer's gradient comes from a zero
perturbation added to its output through method interception (`layers.apply_with_layer`),
so the model needs no change.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.explain.layer_outputs import apply_with_layer, last_feature_map


def grad_cam(module: nn.Module, variables, inputs, targets, *, layer: str | None = None,
             batch_size: int = 32) -> jax.Array:
  """Grad-CAM maps (N, h, w) float32 at the layer's resolution (`upsample` for the image's).

  inputs: model inputs (N, H, W, C); targets (N,) int; layer: a module path, default the
  last spatial feature map (`layers.last_feature_map`). `batch_size` examples at a time.
  """
  inputs = jnp.asarray(inputs)
  layer = layer or last_feature_map(module, variables, inputs[:1])

  def one(args):
    x, target = args
    x = x[None]
    features = jax.eval_shape(lambda: apply_with_layer(module, variables, x, layer)[1])

    def score(delta):
      logits, out = apply_with_layer(module, variables, x, layer, lambda out: out + delta)
      return logits[0, target].astype(jnp.float32), out

    grads, out = jax.grad(score, has_aux=True)(jnp.zeros(features.shape, features.dtype))
    weights = grads[0].astype(jnp.float32).mean(axis=(0, 1))  # (C,)
    return jax.nn.relu(jnp.einsum('hwc,c->hw', out[0].astype(jnp.float32), weights))

  return jax.lax.map(one, (inputs, targets), batch_size=min(batch_size, len(inputs)))


def upsample(maps, size: tuple[int, int]) -> jax.Array:
  """(N, h, w) -> (N, H, W) by bilinear interpolation (to lay a map over its image)."""
  maps = jnp.asarray(maps, jnp.float32)
  return jax.image.resize(maps, (maps.shape[0], *size), 'bilinear')
