"""Host memory for XLA:CPU: freed memory kept for the next step instead of handed back.

XLA:CPU gives every execution of a program one scratch block for its intermediate values
(585 MB for `experiments/lm.py`'s GPT at batch 32) and frees it at the end. glibc's malloc
serves a block that large with a fresh `mmap` and unmaps it at `free`, so every step
page-faults its whole scratch in again: 150,000 faults and about 0.3 s of kernel time per
step of that GPT on a 2-core CPU, a fifth of the step. `reuse_host_memory()` tells malloc to
keep freed memory in its heap (no `mmap` for large blocks, no trimming) and to serve every
thread from that heap (one arena): XLA allocates the scratch on its own worker thread, and a
thread with an arena of its own would `mmap` a block that large anyway. The next step then
reuses the same pages.

The price: the process keeps its peak heap after freeing it, and threads share one malloc
arena. The command lines (`experiments/*.py`, `jaxmodels train`) call it at start; a script
of your own calls it before its first jax computation (the worker thread takes its arena
then). It changes nothing where malloc is not glibc's, where an accelerator plugin is
installed, or with JAXMODELS_HOST_MEMORY=system.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import platform

ENV_VAR = 'JAXMODELS_HOST_MEMORY'

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def _accelerator_plugin_installed() -> bool:
  """Whether jax may find a GPU or TPU here (a PJRT plugin or libtpu is installed)."""
  if os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return False
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True
  return any(importlib.util.find_spec(name) is not None for name in ('jax_plugins', 'libtpu'))


def reuse_host_memory() -> bool:
  """Keeps freed host memory for reuse (see the module doc); True when the setting took."""
  if os.environ.get(ENV_VAR, '').lower() == 'system' or platform.system() != 'Linux':
    return False
  if _accelerator_plugin_installed() or not platform.libc_ver()[0] == 'glibc':
    return False
  libc = ctypes.CDLL(None)
  if not hasattr(libc, 'mallopt'):
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_ARENA_MAX, 1)))
