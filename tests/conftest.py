"""Eight simulated CPU devices for the sharding tests. XLA reads the flag when JAX
starts its backend, so it is set here, before any test imports run jax code."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FLAG}'.strip()

# Experiments turn JAX's persistent compilation cache on by default; tests that run them
# should neither read nor fill the user's cache (test_compilation_cache.py checks it).
os.environ.setdefault('JAXMODELS_COMPILATION_CACHE', 'off')
