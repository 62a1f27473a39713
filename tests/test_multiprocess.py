"""Two real processes form one JAX cluster on localhost and train data-parallel."""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name('multiprocess_worker.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(process_id, num_processes, port, out):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return subprocess.Popen([sys.executable, str(WORKER), str(process_id), str(num_processes),
                           str(port), str(out)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(proc):
  output, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, output[-4000:]


@pytest.mark.slow
def test_two_processes_agree_and_match_one_process(tmp_path):
  port = _free_port()
  workers = [_launch(i, 2, port, tmp_path / f'p{i}.npz') for i in range(2)]
  for w in workers:
    _wait(w)
  reference = _launch(0, 1, port, tmp_path / 'single.npz')
  _wait(reference)

  p0, p1, single = (np.load(tmp_path / f) for f in ('p0.npz', 'p1.npz', 'single.npz'))
  assert set(p0.files) == set(single.files) and any(k.startswith('fit/') for k in p0.files)
  for key in p0.files:
    np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)  # Replicas agree exactly.
    np.testing.assert_allclose(p0[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert p0['fit_losses'][-1] < p0['fit_losses'][0]
