"""Multi-process runs on JAX's own runtime: `jax.distributed.initialize`, nothing else.

TPU VMs and SLURM jobs are detected by JAX itself (no arguments); GPU clusters
without SLURM pass the coordinator address, process count and id.
"""
import hashlib
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxmodels.errors import ConfigError


def _cluster_detected() -> bool:
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1') or 1)
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts or bool(os.environ.get('JAX_COORDINATOR_ADDRESS'))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins this process to a multi-process JAX cluster; returns whether it did.

  With explicit arguments they are used; otherwise JAX's own cluster
  detection runs when a TPU pod slice, a SLURM job of several tasks or
  JAX_COORDINATOR_ADDRESS is found. A single process does nothing. CPU
  processes talk through gloo collectives.
  """
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not (explicit or _cluster_detected()):
    return False
  # Only the CPU backend reads this; it lets CPU-only processes (and tests) all-reduce.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, plots, summaries; every process takes part in checkpoints."""
  return jax.process_index() == 0


def assert_same_config(config) -> None:
  """Raises ConfigError unless every process runs with the same config."""
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256(str(config).encode()).digest()[:8]
  mine = np.frombuffer(digest, np.uint8)
  everyone = multihost_utils.process_allgather(mine)
  if not (everyone == everyone[0]).all():
    raise ConfigError('the processes of this run have different configs: give every process '
                      'the same config')


def host_copy(tree):
  """Whole numpy copies of (possibly sharded, multi-process) arrays, on every process.

  A collective when a leaf is split over processes: every process must call it.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if x.is_fully_replicated
                      else multihost_utils.process_allgather(x, tiled=True), tree)
