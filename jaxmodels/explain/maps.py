"""Explanations of a trained classifier, ready to show: a heat map per image, a heat value
per token. These pick the method, explain the predicted class unless told another, and
work in the space a person looks at -- image gradients are taken with respect to the raw
pixels (0..255, through the model's input normalisation), so the integrated-gradients
baseline is a black image; text attributions are taken at the token embeddings.

    run = TrainedRun.load('runs/fashion_mnist')
    heat, targets = image_maps(run.module, run.variables, run.card['inputs'], images,
                               'integrated_gradients')            # (N, H, W), (N,)
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import data as data_lib
from jaxmodels.errors import InputError
from jaxmodels.explain.attention import cls_rollout
from jaxmodels.explain.grad_cam import grad_cam, upsample
from jaxmodels.explain.gradients import input_gradients, integrated_gradients, smoothgrad
from jaxmodels.explain.layer_outputs import apply_with_layer, first_layer_of_type

IMAGE_METHODS = ('saliency', 'integrated_gradients', 'smoothgrad', 'grad_cam', 'attention_rollout')
TEXT_METHODS = ('saliency', 'integrated_gradients', 'attention_rollout')


def _check(method: str, methods: tuple, kind: str) -> None:
  if method not in methods:
    raise InputError(f'method {method!r} does not explain {kind}; choose one of '
                     f'{", ".join(methods)}')


def predicted_classes(module: nn.Module, variables, model_inputs, batch_size: int = 256):
  """(N,) int32: the argmax class of each input."""
  logits = jax.lax.map(lambda x: module.apply(variables, x[None])[0], jnp.asarray(model_inputs),
                       batch_size=min(batch_size, len(model_inputs)))
  return jnp.argmax(logits, -1).astype(jnp.int32)


def image_maps(module: nn.Module, variables, input_spec: dict, images, method: str,
               targets=None, *, steps: int = 64, samples: int = 25, seed: int = 0,
               batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(heat (N, H, W) float32 >= 0, targets (N,) int32) for raw images (N, H, W, C) 0..255.

  method: saliency (|gradient|), integrated_gradients (|attribution|, black baseline,
  `steps` points), smoothgrad (mean squared gradient of `samples` noisy copies), each
  summed over channels; grad_cam (the last feature map's, upsampled); attention_rollout
  (the [CLS] row over the ViT's patches, upsampled). targets: the classes explained
  (default: the predicted ones).
  """
  _check(method, IMAGE_METHODS, 'images')
  patch = getattr(module, 'patch_size', None)
  if method == 'attention_rollout' and patch is None:
    raise InputError(f'attention_rollout explains a ViT, not {type(module).__name__}')
  to_model = lambda x: data_lib.to_model_inputs(input_spec, x)

  def compute(variables, raw, targets):  # One program: compiled once per call.
    if targets is None:
      targets = predicted_classes(module, variables, to_model(raw))
    fn = lambda x: module.apply(variables, to_model(x))
    size = raw.shape[1:3]
    if method == 'saliency':
      heat = jnp.abs(input_gradients(fn, raw, targets, batch_size=batch_size)).sum(-1)
    elif method == 'integrated_gradients':
      heat = jnp.abs(integrated_gradients(fn, raw, targets, steps=steps,
                                          batch_size=batch_size)).sum(-1)
    elif method == 'smoothgrad':
      heat = smoothgrad(fn, raw, targets, jax.random.PRNGKey(seed), samples=samples,
                        batch_size=batch_size).sum(-1)
    elif method == 'grad_cam':
      heat = upsample(grad_cam(module, variables, to_model(raw), targets,
                               batch_size=batch_size), size)
    else:
      rows = cls_rollout(module, variables, to_model(raw))[:, 1:]  # Patches, without [CLS].
      heat = upsample(rows.reshape(len(raw), size[0] // patch, size[1] // patch), size)
    return heat, targets

  targets = None if targets is None else jnp.asarray(targets, jnp.int32)
  heat, targets = jax.jit(compute)(variables, jnp.asarray(images, jnp.float32), targets)
  return np.asarray(heat, np.float32), np.asarray(targets)


def token_heat(module: nn.Module, variables, tokens, method: str, targets=None, *,
               steps: int = 64, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """(heat (N, T) float32, targets (N,) int32) for token ids (N, T), 0 = padding (heat 0).

  method: integrated_gradients (at the token embeddings, zero baseline, summed over the
  embedding: signed, and summing to f(x) - f(baseline)); saliency (gradient x embedding,
  summed: signed); attention_rollout (the [CLS] row, BERT-style encoder: >= 0).
  """
  _check(method, TEXT_METHODS, 'texts')
  tokens = jnp.asarray(tokens, jnp.int32)
  embed = None if method == 'attention_rollout' else first_layer_of_type(
      module, variables, tokens[:1], nn.Embed)

  def one(variables, ids, target):
    fn = lambda e: apply_with_layer(module, variables, jnp.broadcast_to(ids, e.shape[:2]),
                                    embed, lambda out: e.astype(out.dtype))[0]
    embedded = apply_with_layer(module, variables, ids[None], embed)[1].astype(jnp.float32)
    if method == 'saliency':
      attribution = embedded * input_gradients(fn, embedded, target[None])
    else:
      attribution = integrated_gradients(fn, embedded, target[None], steps=steps,
                                         batch_size=batch_size)
    return attribution[0].sum(-1)

  def compute(variables, tokens, targets):  # One program: compiled once per call.
    if targets is None:
      targets = predicted_classes(module, variables, tokens)
    if method == 'attention_rollout':
      heat = cls_rollout(module, variables, tokens)
    else:
      heat = jax.lax.map(lambda a: one(variables, *a), (tokens, targets))
    return jnp.where(tokens != 0, heat, 0.0), targets

  targets = None if targets is None else jnp.asarray(targets, jnp.int32)
  heat, targets = jax.jit(compute)(variables, tokens, targets)
  return np.asarray(heat, np.float32), np.asarray(targets)
