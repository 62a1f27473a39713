"""Eight simulated CPU devices for the sharding tests. XLA reads the flag when JAX
starts its backend, so it is set here, before any test imports run jax code."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FLAG}'.strip()
