"""Smoke tests: every benchmark script runs a few steps end to end, so none rots.
(Their figures are measurements, printed by the scripts; nothing here asserts on time.)"""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels.data import write_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(script, *args, env=None):
  out = subprocess.run([sys.executable, f'benchmarks/{script}', *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out.stdout


@pytest.fixture
def fashion_mnist_dir(tmp_path):
  """A small Fashion-MNIST-shaped IDX set that the benchmark finds through JAXMODELS_DATA_DIR."""
  rng = np.random.default_rng(0)
  directory = tmp_path / 'fashion_mnist'
  directory.mkdir()
  for prefix, n in (('train', 1200), ('t10k', 200)):
    labels = rng.integers(0, 10, n)
    images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 18).astype(np.uint8)
    write_idx(directory / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz', labels.astype(np.uint8))
  return tmp_path


@pytest.mark.slow
def test_cpu_cnn_prints_every_figure(fashion_mnist_dir):
  env = {**os.environ, 'JAXMODELS_DATA_DIR': str(fashion_mnist_dir)}
  out = run('cpu_cnn.py', '--quick', env=env)
  for framework in ('jaxmodels', 'keras', 'pytorch', 'plain_jit'):
    assert re.search(rf'bs +64 +{framework} +\d+ img/s|{framework}: skipped', out), out
  assert re.search(r'^ +64 .* \d+\.\d\dx', out, re.M), out       # the ratio table
  assert re.search(r'^ +512 ', out, re.M), out
  assert 'P1 (>= 1.5x Keras at bs 64)' in out
  assert re.search(r'bs +64: jaxmodels step [\d.]+ ms, plain jit step [\d.]+ ms', out), out
  assert re.search(r'cold +: first step [\d.]+ s', out) and re.search(r'cached: first step', out)
  assert re.search(r'test accuracy 0\.\d+ in [\d.]+ s end to end', out), out
  assert re.search(r'^conv kernel gradient +[\d.]+ +[\d.]+$', out, re.M), out  # the profile
  for size in (64, 512):  # The dense layer's products, jax beside the other libraries.
    assert re.search(rf'bs +{size} input gradient g @ w.T +\( *\d+ rows\) jax +\d+ us; '
                     rf'numpy +\d+ us \(jax takes [\d.]+x\)', out), out


@pytest.mark.slow
def test_gpu_gpt_runs_a_tiny_model():
  out = run('gpu_gpt.py', '--quick')
  assert re.search(r'[\d,]+ tokens/s; loss \d', out), out
  assert 'model count 6N+12LTE' in out


@pytest.mark.slow
def test_gpu_airbench_runs_a_tiny_net():
  out = run('gpu_airbench.py', '--quick', '--torch_cpu')
  assert re.search(r'jaxmodels: train [\d,]+ img/s, TTA eval [\d,]+ img/s', out), out
  assert re.search(r'pytorch: +(train [\d,]+ img/s|skipped)', out), out


@pytest.mark.slow
def test_serve_load_rollout_runs(tmp_path_factory, tmp_path):
  """serve_load.py --rollout --compare-logging on a two-version repository, briefly: every
  figure printed and written, no errors, no compilation after warm-up, one version an answer,
  and the serving state left as it was."""
  from deploy_run import trained_once
  from jaxmodels import console
  workdir, root = trained_once(tmp_path_factory)
  repo = tmp_path / 'repo'
  for extra in ([], ['--quantize', 'int8']):
    assert console.main(['export', workdir, '--repo', str(repo), '--platforms', 'cpu',
                         *extra]) == 0
  np.save(tmp_path / 'images.npy', np.load(root / 'data' / 'test.npz')['image'][:32])
  out = run('serve_load.py', str(repo), '--rollout', '--compare-logging', '--clients', '3',
            '--seconds', '4', '--max-batch-size', '4', '--images', str(tmp_path / 'images.npy'),
            '--json', str(tmp_path / 'load.json'), env={**os.environ, 'XLA_FLAGS': ''})
  assert re.search(r'^cpu: .+ \(\d+ cores\)$', out, re.M), out
  for phase in ('before', 'during', 'after'):
    assert re.search(rf'^  {phase} .* req/s  p50 .* ms  p99 .* ms', out, re.M), out
  assert re.search(r'canary share [\d.]+ % of \d+ requests', out), out
  assert re.search(r'p99 during / before: [\d.]+x', out), out
  assert re.search(r'logging on \(--log-inputs 0\.1\) / off \(--store off\): [\d.]+x', out), out
  load = json.loads((tmp_path / 'load.json').read_text())
  rollout = load['rollout']
  assert (rollout['champion'], rollout['candidate']) == (2, 1)
  assert all(swap['status'] == 200 for swap in rollout['swaps'].values()), rollout['swaps']
  assert rollout['errors'] == 0 and rollout['requests'] > 0
  assert rollout['compilations_after_warmup'] == {'before': 0, 'after': 0}
  assert rollout['one_version_answers'] == rollout['requests']
  assert set(rollout['versions_answered']) == {'1', '2'}
  for side in ('off', 'on'):
    assert load['logging'][side]['errors'] == 0 and load['logging'][side]['requests'] > 0
    assert load['logging'][side]['compilations_after_warmup'] == 0
  assert not (repo / 'serving.json').exists()  # The serving state as it was.


@pytest.mark.slow
def test_feedback_loop_closes_on_fashion_mnist(tmp_path):
  """feedback_loop.py --quick on Debian's Fashion-MNIST (.ci/run installs it): no false alarm
  beyond 5 % of 40 windows, every shift flagged within 2 windows, the retrained version >= 10
  points better on held-out shifted feedback and no worse on the test split, and a rollout
  through the gate with 0 errors."""
  from jaxmodels.data.local import find_local_dir
  if find_local_dir('fashion_mnist') is None:
    pytest.skip('needs Fashion-MNIST: apt-get install dataset-fashion-mnist')
  out = run('feedback_loop.py', '--quick', '--workdir', str(tmp_path / 'loop'), '--json',
            str(tmp_path / 'loop.json'), env={**os.environ, 'XLA_FLAGS': ''})
  figures = json.loads((tmp_path / 'loop.json').read_text())
  assert figures['false_alarms']['windows'] >= 40, out
  assert figures['false_alarms']['rate'] <= 0.05, out
  for shift, found in figures['shifts'].items():
    assert found['detected_in_window'] in (1, 2), (shift, out)
  replay = figures['retrain']['replay 0.8']
  assert replay['holdout'][1] - replay['holdout'][0] >= 0.10, out
  assert replay['test'][1] >= replay['test'][0] - 0.01, out
  assert figures['retrain']['no replay']['replayed'] == 0
  rollout = figures['rollout']
  assert {name: swap['status'] for name, swap in rollout['swaps'].items()} == {
      'load': 200, 'canary': 200, 'promote': 200, 'rollback': 200}, out
  assert rollout['errors'] == 0 and rollout['requests'] > 0
  assert rollout['compilations_after_warmup'] == 0


@pytest.mark.slow
def test_cpu_lm_prints_tokens_per_second_ratios_and_the_step_breakdown():
  out = run('cpu_lm.py', '--quick')
  assert re.search(r'^CPU: .+ \(\d+ cores; bf16 flags: ', out, re.M), out
  for precision in ('fp32', 'bf16'):
    assert re.search(rf'bs 8 {precision} round 1 jaxmodels +\d+ tokens/s', out), out
    assert re.search(rf'bs 8 {precision} round 1 pytorch +\d+ tokens/s|pytorch: skipped', out), out
    assert re.search(rf'bs 8 {precision} +target >= [\d.]+x PyTorch eager: [\d.]+x', out), out
  assert re.search(r'whole step, dropout 0\.1 +[\d.]+ ms +100\.0 %', out), out
  assert re.search(r'optimiser update \(clip \+ AdamW\) +[\d.]+ ms', out), out
