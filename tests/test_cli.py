"""The experiment command line: flags, overrides, one clear line and exit code 2 for bad input,
the digits fallback, early stops that stay stopped, and 1 vs 2 processes."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels.data import write_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(extra=None, devices=1):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return {**env, 'JAXMODELS_OFFLINE': '1', **(extra or {})}


def _run(script, *args, env_extra=None, devices=1):
  return subprocess.run([sys.executable, str(ROOT / 'experiments' / script), *args],
                        capture_output=True, text=True, env=_env(env_extra, devices), timeout=300)


def _assert_one_line_error(result, pattern):
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, result.stderr
  assert pattern in errors[0], errors[0]


def _write_mnist(root: pathlib.Path, n_train=96, n_test=40):
  """A tiny MNIST in IDX .gz files, the format Debian and the MNIST site ship."""
  rng = np.random.default_rng(0)
  root.mkdir()
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    labels = rng.integers(0, 10, n)
    images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 18).astype(np.uint8)
    write_idx(root / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(root / f'{prefix}-labels-idx1-ubyte.gz', labels.astype(np.uint8))
  return root


@pytest.fixture
def mnist_dir(tmp_path):
  return _write_mnist(tmp_path / 'mnist')


QUICK = ['--config.train.batch_size=16', '--config.train.log_every_steps=2',
         '--config.train.eval_batch_size=20', '--config.train.steps_per_dispatch=2',
         '--config.train.progress=False', '--config.model.widths=(8, 8, 8)',
         '--config.model.dense=16']


@pytest.mark.slow  # A whole training run in a subprocess: 25-35 s.
def test_mnist_cli_trains_on_local_idx_files(mnist_dir, tmp_path):
  workdir = tmp_path / 'run'
  result = _run('mnist.py', f'--workdir={workdir}', f'--config.data.local_dir={mnist_dir}',
                '--config.train.num_steps=4', *QUICK)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['steps'] == 4 and summary['data_source'].startswith('local:')
  assert summary['dataset'] == 'mnist'
  assert summary['overrides']['train.num_steps'] == 4  # Parsed: the int, not the string.
  assert summary['overrides']['model.widths'] == [8, 8, 8]


@pytest.mark.slow  # A whole training run in a subprocess: 25-40 s.
def test_offline_mnist_falls_back_to_digits_and_says_so(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  hide = {'JAXMODELS_DATA_DIR': str(empty), 'TFDS_DATA_DIR': str(empty)}
  workdir = tmp_path / 'run'
  result = _run('mnist.py', f'--workdir={workdir}', '--config.train.num_steps=3', *QUICK,
                env_extra=hide)
  assert result.returncode == 0, result.stderr[-3000:]
  notes = [l for l in result.stdout.splitlines() if l.startswith('note: no mnist here')]
  assert len(notes) == 1 and 'data.local_dir' in notes[0], result.stdout
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['dataset'] == 'digits' and summary['data_source'].startswith('sklearn')
  assert summary['examples']['train'] + summary['examples']['validation'] == 1438
  # data.fallback=none makes MNIST mandatory: one line, with the flag that points at the files.
  result = _run('mnist.py', f'--workdir={tmp_path / "run2"}', '--config.data.fallback=none',
                env_extra=hide)
  _assert_one_line_error(result, '--config.data.local_dir=')
  assert 'no network' in result.stderr


def test_help_lists_the_config_fields_with_their_help():
  result = _run('fashion_mnist.py', '--help')
  assert result.returncode == 0
  for text in ('--workdir', '--config', 'optimizer.learning_rate', 'train.batch_size',
               'augment.shift', 'data.local_dir', 'Global batch size', '[may change on resume]'):
    assert text in result.stdout, text


BAD_COMMANDS = [
    ('mnist.py', ['--config.train.batch_sise=8'],
     "unknown config key 'train.batch_sise'; did you mean train.batch_size"),
    ('mnist.py', ['--config.optimizer.learning_rate=-0.1'],
     'optimizer.learning_rate must be > 0, got -0.1 (set with --config.optimizer.learning_rate='),
    ('mnist.py', ['--config.train.batch_size=abc'],
     "cannot read 'abc' as the int that train.batch_size takes"),
    ('fashion_mnist.py', ['--config.model.name=gpt'],
     'model.name must be one of mlp, small_cnn, three_conv_cnn'),
    ('fashion_mnist.py', [f'--config={ROOT}/experiments/configs/fashion_mnist.py:nope'],
     "cannot load config"),
    ('lm.py', ['--config.data.text_file=/tmp'], "'/tmp' is a directory: pass a text file"),
    ('lm.py', ['--config.data.text_file={binary}'], 'does not look like text'),
    ('mnist.py', ['--num_processes=two'], "argument --num_processes: invalid int value: 'two'"),
]


@pytest.mark.parametrize('script, args, message', BAD_COMMANDS,
                         ids=[' '.join(c[1]) for c in BAD_COMMANDS])
def test_bad_command_lines_get_one_line_and_exit_code_2(tmp_path, script, args, message):
  binary = tmp_path / 'model.bin'
  binary.write_bytes(np.random.default_rng(0).bytes(4000))
  args = [a.format(binary=binary) for a in args]
  _assert_one_line_error(_run(script, f'--workdir={tmp_path / "run"}', *args), message)


def test_wrong_image_shape(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / 'data'
  data.mkdir()
  np.savez(data / 'train.npz', image=rng.integers(0, 256, (32, 28, 28, 1), np.uint8),
           label=np.zeros(32, np.int64))
  np.savez(data / 'test.npz', image=rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
           label=np.zeros(8, np.int64))
  result = _run('mnist.py', f'--config.data.local_dir={data}', f'--workdir={tmp_path / "run"}')
  _assert_one_line_error(result, '(32, 32, 3)')


@pytest.mark.slow  # Two training runs in subprocesses: 30-35 s.
def test_an_early_stop_stays_stopped(mnist_dir, tmp_path):
  """Stopped early, the same command again trains no further and reports the same result."""
  workdir = tmp_path / 'run'
  args = ['mnist.py', f'--workdir={workdir}', f'--config.data.local_dir={mnist_dir}',
          '--config.train.num_steps=40', '--config.train.eval_every_steps=2',
          '--config.early_stopping.patience=1', '--config.early_stopping.min_delta=1e9',
          '--config.checkpoint.best_metric=loss', '--config.checkpoint.best_mode=min', *QUICK]
  first = _run(*args)  # No change is an improvement of 1e9: it stops at the second evaluation.
  assert first.returncode == 0, first.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  evals = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  losses = {r['step']: r['eval/loss'] for r in evals if 'eval/loss' in r}
  assert sorted(losses) == [2, 4] and summary['stopped_early']
  assert summary['steps'] == min(losses, key=losses.get)  # The result: the best checkpoint.
  again = _run(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = json.loads((workdir / 'summary.json').read_text())
  assert rerun['resumed'] and rerun['stopped_early'] and rerun['steps'] == summary['steps']
  assert rerun['test'] == pytest.approx(summary['test'])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_one_and_two_processes_train_on_the_same_examples(tmp_path):
  """The same config on 2 devices of 1 process and on 2 processes of 1 device each: the same
  training examples, epochs and test set, and (same shards, same batches) the same result."""
  data = _write_mnist(tmp_path / 'mnist', n_train=101, n_test=37)  # Odd: the halves differ.
  args = [f'--config.data.local_dir={data}', '--config.data.num_train=91',
          '--config.data.num_test=33', '--config.train.num_epochs=2',
          '--config.augment.shift=0.0', *QUICK]
  single = _run('mnist.py', f'--workdir={tmp_path / "one"}', *args, devices=2)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(ROOT / 'experiments' / 'mnist.py'), f'--workdir={tmp_path / "two"}',
       *args, f'--coordinator_address=localhost:{port}', '--num_processes=2',
       f'--process_id={i}'], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
  one, two = (json.loads((tmp_path / d / 'summary.json').read_text()) for d in ('one', 'two'))
  assert two['processes'] == 2 and one['processes'] == 1 and one['mesh'] == two['mesh']
  assert one['examples'] == two['examples'] == {'train': 82, 'validation': 9, 'test': 33}
  assert one['epochs'] == two['epochs'] == 2.0 and one['steps'] == two['steps'] == 10
  assert two['test'] == pytest.approx(one['test'], rel=1e-4, abs=1e-5)
