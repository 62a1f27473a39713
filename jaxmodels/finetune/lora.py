"""LoRA (Hu et al. 2021) through qwix: `with_lora(module, ...)` adds trainable low-rank
adapters A (fan-in, r) and B (r, fan-out) beside the kernels of the matched layers, so
y = x W + (alpha / r) x A B; B starts at zero, so the adapted model starts equal to the
base. `merge_lora` folds the adapters back into plain kernels (W + (alpha / r) A B) that
the unadapted module takes.

qwix intercepts the `lax.dot_general` of Flax's Dense and of the Transformers'
`Projection` (whose kernels keep their head axes: (E, H, D) and (H, D, E)); adapter names
are '<kernel>_lora_a' / '<kernel>_lora_b'.
"""
import re

import flax.linen as nn
import jax
import numpy as np

ADAPTER = re.compile(r'_lora_[ab]$')


def with_lora(module: nn.Module, rank: int, alpha: float, modules: str) -> nn.Module:
  """`module` with LoRA adapters on the layers whose module path (e.g.
  'bert/encoder/layer0/attention/query') fullmatches the regex `modules`. Apply it to
  jax arrays: qwix recognises a kernel by its type, and adapts no numpy one."""
  import qwix  # Imported on first use.
  provider = qwix.LoraProvider(module_path=modules, rank=rank, alpha=alpha)
  return qwix.apply_lora_to_model(module, provider)


def is_adapter(path: str) -> bool:
  """Whether a param path ('.../query/kernel_lora_a') is a LoRA adapter."""
  return bool(ADAPTER.search(path))


def kernel_modules(paths, count: int = 2) -> str:
  """The first `count` module paths that hold a kernel, for messages: what `modules` matches."""
  kernels = [p.rsplit('/', 1)[0] for p in paths if p.endswith('/kernel')]
  return ', '.join(kernels[:count]) or 'none'


def merge_lora(params, alpha: float):
  """Plain params: each kernel with adapters becomes W + (alpha / r) (A B) reshaped to W's
  shape (A: (prod of W's leading fan-in axes, r), B: (r, prod of the rest)); the
  adapters are dropped. Host or device arrays in, the same kinds out."""
  def merge(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: merge(v) for k, v in tree.items() if not ADAPTER.search(k)}
    for name in [k for k in tree if k.endswith('_lora_a')]:
      kernel_name = name[:-len('_lora_a')]
      a, b, kernel = tree[name], tree[kernel_name + '_lora_b'], tree[kernel_name]
      rank = a.shape[-1]
      delta = (a.astype(np.float32) @ b.astype(np.float32)) * (alpha / rank)
      out[kernel_name] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
    return out
  return merge(jax.tree.map(lambda x: x, params))  # A fresh dict tree: FrozenDicts too.
