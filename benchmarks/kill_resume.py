"""Kill a training run at random steps, resume it each time, and check that nothing was lost.

  python benchmarks/kill_resume.py --kills 20            # SIGKILL: no chance to save
  python benchmarks/kill_resume.py --kills 5 --signal TERM  # preemption: saves, exits 75

Runs `experiments/mnist.py` on a small generated MNIST (IDX files) once without
interruption, then again in another workdir, killing the process at --kills
random steps and restarting the same command each time. Prints whether the final
params are bit-identical and whether every checkpoint left behind is readable;
exits 1 if not. tests/test_reliability.py runs it with 5 kills.
"""
import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOTAL_STEPS = 60


def make_data(directory: pathlib.Path):
  from jaxmodels.data import write_idx
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n in (('train', 320), ('t10k', 64)):
    labels = rng.integers(0, 10, n)
    images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 18).astype(np.uint8)
    write_idx(directory / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz', labels.astype(np.uint8))


def command(data_dir, workdir):
  return [sys.executable, str(ROOT / 'experiments' / 'mnist.py'), f'--workdir={workdir}',
          f'--config.data.local_dir={data_dir}', f'--config.train.num_steps={TOTAL_STEPS}',
          '--config.train.batch_size=32', '--config.train.log_every_steps=1',
          '--config.train.steps_per_dispatch=2', '--config.train.progress=False',
          '--config.model.widths=(8, 16, 16)', '--config.model.dense=32',
          '--config.checkpoint.every_steps=4', '--config.checkpoint.keep_last=2',
          '--config.augment.shift=0.1', '--config.train.eval_every_steps=20']


def last_logged_step(workdir: pathlib.Path) -> int:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return -1
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)['step'])
    except (json.JSONDecodeError, KeyError):
      pass
  return max(steps, default=-1)


def env(root: pathlib.Path):
  # One CPU device and no TensorFlow chatter; the run reads only local files. The runs share
  # a compilation cache: each restart is a resume, not a recompile.
  e = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  cache = os.environ.get('JAXMODELS_COMPILATION_CACHE', '')
  return {**e, 'JAXMODELS_OFFLINE': '1', 'TF_CPP_MIN_LOG_LEVEL': '3',
          'JAXMODELS_COMPILATION_CACHE': cache if cache not in ('', 'off') else str(root / 'xla')}


def run_to_end(cmd, root):
  result = subprocess.run(cmd, env=env(root), capture_output=True, text=True, timeout=600)
  if result.returncode != 0:
    raise SystemExit(f'run failed ({result.returncode}):\n{result.stderr[-3000:]}')


def run_and_interrupt(cmd, workdir, target_step, sig):
  """Starts the run; sends `sig` once a step >= target_step is logged. Returns (step, code)."""
  # stderr to a file, not a pipe: an unread pipe fills up and blocks the child.
  log = open(workdir.parent / 'interrupted_run.log', 'w+')
  proc = subprocess.Popen(cmd, env=env(workdir.parent), stdout=subprocess.DEVNULL, stderr=log,
                          text=True)
  while proc.poll() is None and last_logged_step(workdir) < target_step:
    time.sleep(0.02)
  step = last_logged_step(workdir)
  if proc.poll() is None:
    proc.send_signal(sig)
  proc.wait(timeout=300)
  log.seek(0)
  stderr = log.read()
  log.close()
  if sig == signal.SIGTERM and proc.returncode != 75 and step < TOTAL_STEPS:
    raise SystemExit(f'SIGTERM at step {step}: expected exit code 75, got {proc.returncode}:\n'
                     f'{stderr[-2000:]}')
  return step, proc.returncode


def compare(reference: pathlib.Path, resumed: pathlib.Path) -> tuple[bool, list[str]]:
  from jaxmodels.checkpoint import Checkpointer, read_params
  expected = read_params(str(reference / 'checkpoints'), TOTAL_STEPS)
  got = read_params(str(resumed / 'checkpoints'), TOTAL_STEPS)
  import jax
  same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)))
  unreadable = []
  directory = resumed / 'checkpoints'
  for step in Checkpointer(str(directory)).steps:
    try:
      read_params(str(directory), step)
    except Exception as e:  # noqa: BLE001 - any failure means unreadable.
      unreadable.append(f'{step}: {type(e).__name__}')
  leftovers = [p.name for p in directory.iterdir() if 'tmp' in p.name or 'unreadable' in p.name]
  return same, unreadable + leftovers


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=20, help='interruptions (default 20)')
  parser.add_argument('--signal', choices=('KILL', 'TERM'), default='KILL')
  parser.add_argument('--seed', type=int, default=0, help='seed for the kill steps')
  parser.add_argument('--workdir', default=None, help='where to run (default: a temp dir)')
  args = parser.parse_args()
  sig = getattr(signal, f'SIG{args.signal}')
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='kill_resume_'))
  data, reference, resumed = root / 'data', root / 'reference', root / 'resumed'
  make_data(data)

  start = time.perf_counter()
  run_to_end(command(data, reference), root)
  print(f'uninterrupted run: {time.perf_counter() - start:.1f}s', flush=True)

  rng = np.random.default_rng(args.seed)
  targets = np.sort(rng.choice(np.arange(2, TOTAL_STEPS - 1), size=args.kills, replace=False))
  for i, target in enumerate(targets):
    step, code = run_and_interrupt(command(data, resumed), resumed, int(target), sig)
    print(f'interruption {i + 1}/{args.kills}: SIG{args.signal} at step {step} '
          f'(exit code {code})', flush=True)
  run_to_end(command(data, resumed), root)

  same, problems = compare(reference, resumed)
  print(f'final params bit-identical to the uninterrupted run: {same}')
  print(f'unreadable or leftover checkpoint directories: {problems or "none"}')
  print(f'total time: {time.perf_counter() - start:.1f}s')
  sys.exit(0 if same and not problems else 1)


if __name__ == '__main__':
  main()
