"""`reuse_host_memory`: XLA:CPU's per-execution scratch comes back to the same pages."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
N = 3000
import json, resource, sys
import jaxmodels as jm
applied = jm.reuse_host_memory()
import jax, jax.numpy as jnp

@jax.jit
def scratchy(x):
  # Two products of 3000 x 3000 (36 MB each): intermediates in the program's scratch.
  y = x @ x
  z = y @ x
  return z.sum() + y.max()

x = jnp.ones((N, N)) / N
scratchy(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  scratchy(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
print(json.dumps({'applied': applied, 'faults_per_call': faults}))
'''
PAGES = 3000 * 3000 * 4 // 4096  # One intermediate's pages.


def run(setting: str) -> dict:
  env = dict(os.environ, JAXMODELS_HOST_MEMORY=setting)
  done = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, env=env,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_the_scratch_of_each_execution_reuses_pages_instead_of_faulting_them_in_again():
  system, reused = run('system'), run('reuse')
  assert not system['applied'] and reused['applied']
  # glibc maps blocks this large fresh per execution: every page faults in again (and more:
  # the products' own working buffers), against a few percent of one intermediate reused.
  assert system['faults_per_call'] > PAGES, system
  assert reused['faults_per_call'] < 0.05 * system['faults_per_call'], (system, reused)
