"""Weight-only int8 with per-channel scales, for export.

Every kernel (Dense (in, out), Conv (h, w, in, out)) is stored as int8 with one float32
scale per output channel, every embedding table (vocab, features) with one per row;
biases, normalisation parameters and statistics stay float32. The exported function
dequantises (`q * scale`) before applying the model, so compute stays float32 and only the
weights shrink (4x for those tensors).

In-house rather than qwix (which the library's model compression uses): an artifact must
load with jax and numpy alone, so its weights are a flat {name: array} dict in safetensors
and dequantisation is two jnp ops inside the exported function, with no qwix or flax types
to rebuild at load time. (Also, qwix 0.1.8's PTQ refuses weight-only quantisation of
convolutions: its conv_general_dilated needs the same act_qtype and weight_qtype.)
"""
import jax.numpy as jnp
import numpy as np

SCALE_SUFFIX = ':scale'
INT8_MAX = 127


def _channel_axes(name: str, weight: np.ndarray) -> tuple[int, ...] | None:
  """The axes one scale spans (None: the tensor stays float)."""
  leaf = name.rsplit('/', 1)[-1]
  if weight.ndim < 2 or not np.issubdtype(weight.dtype, np.floating):
    return None
  if leaf == 'kernel':
    return tuple(range(weight.ndim - 1))  # One scale per output channel.
  if leaf == 'embedding':
    return tuple(range(1, weight.ndim))  # One scale per row (token).
  return None


def quantize_int8(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{name: float array} -> the same names, kernels and embeddings as int8 (symmetric, round to
  nearest, in [-127, 127]) plus `name + ':scale'` float32 (broadcastable against the kernel)."""
  out = {}
  for name, weight in weights.items():
    axes = _channel_axes(name, weight)
    if axes is None:
      out[name] = weight
      continue
    weight = np.asarray(weight, np.float32)
    scale = np.abs(weight).max(axis=axes, keepdims=True) / INT8_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # An all-zero channel stays 0.
    out[name] = np.clip(np.round(weight / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    out[name + SCALE_SUFFIX] = scale
  return out


def dequantize(weights: dict) -> dict:
  """The float32 weights back (under jit too): int8 `q` with its scale -> q * scale."""
  return {name: (jnp.asarray(value, jnp.float32) * weights[name + SCALE_SUFFIX]
                 if name + SCALE_SUFFIX in weights else value)
          for name, value in weights.items() if not name.endswith(SCALE_SUFFIX)}
