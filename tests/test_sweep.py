"""Sweeps: the grid's runs and their recorded overrides, the random search's seed, resuming
a killed sweep without repeating a trial, optuna's median pruning, the table and plot, and
bad sweep flags."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels import sweep
from jaxmodels.errors import ConfigError
from jaxmodels.sweep import results
from jaxmodels.tasks import image_classification, runner
from jaxmodels.cli import default_extensions


EXTENSIONS = default_extensions()  # What the experiments apply.

def _task_and_config(tmp_path):
  """A tiny image run: 8x8 images where class k has row k bright, an MLP, 16 steps, and an
  evaluation of the validation split every 4 steps."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 320)
  pixels = rng.integers(0, 60, (320, 8, 8, 1))
  pixels[np.arange(320), labels] = 230
  data = tmp_path / 'data'
  data.mkdir(exist_ok=True)
  np.savez(data / 'train.npz', image=pixels[:256].astype(np.uint8), label=labels[:256])
  np.savez(data / 'test.npz', image=pixels[256:].astype(np.uint8), label=labels[256:])
  config = runner.default_config(image_classification.TASK, EXTENSIONS)
  config.data.update(name='blobs', local_dir=str(data), val_fraction=0.25)
  config.model = dict(name='mlp', hidden=(32,), dropout=0.0)
  config.optimizer.update(learning_rate=1e-2, warmup_epochs=0.0)
  config.train.update(batch_size=32, num_steps=16, eval_every_steps=4, log_every_steps=4,
                      eval_batch_size=64, steps_per_dispatch=1, progress=False)
  config.report.num_test_predictions = 0
  config.explain.num_images = 0
  return image_classification.TASK, config, runner.schema_of(image_classification.TASK, EXTENSIONS)


def test_spaces():
  lists = [sweep.parse_dimension('model.hidden', '(16,32),(64,)'),
           sweep.parse_dimension('optimizer.learning_rate', '1e-3,3e-3,1e-2')]
  assert lists[0].choices == ('(16,32)', '(64,)')
  points = sweep.grid(lists)
  assert len(points) == 6 and points[1] == {'model.hidden': '(16,32)',
                                            'optimizer.learning_rate': '3e-3'}
  log = sweep.parse_dimension('optimizer.learning_rate', 'log:1e-4:1e-1')
  width = sweep.parse_dimension('train.batch_size', 'int:16:64')
  drawn = sweep.random_trials([log, width], 200, seed=3)
  assert drawn == sweep.random_trials([log, width], 200, seed=3)
  assert drawn != sweep.random_trials([log, width], 200, seed=4)
  rates = np.log10([float(t['optimizer.learning_rate']) for t in drawn])
  assert rates.min() >= -4 and rates.max() <= -1 and abs(rates.mean() + 2.5) < 0.15  # Log-uniform
  sizes = {int(t['train.batch_size']) for t in sweep.random_trials([width], 1000, seed=3)}
  assert sizes == set(range(16, 65))  # Both ends included.
  for spec in ('log:0:1', 'uniform:2:1', 'log:1e-3', '1,,2', '1,1'):
    with pytest.raises(ConfigError, match='sweep'):
      sweep.parse_dimension('optimizer.learning_rate', spec)
  with pytest.raises(ConfigError, match='value lists, not ranges'):
    sweep.grid([log])


@pytest.mark.slow  # Four training runs and one killed: 25 s.
def test_a_2x2_grid_is_4_runs_and_a_killed_sweep_resumes_without_repeating(
    tmp_path, monkeypatch):
  task, config, schema = _task_and_config(tmp_path)
  dimensions = [sweep.parse_dimension('optimizer.learning_rate', '1e-2,3e-3'),
                sweep.parse_dimension('model.hidden', '(16,),(32,)')]
  calls, real_run = [], runner.run

  def killed_in_the_third(task, config, workdir, **kwargs):
    calls.append(os.path.basename(workdir))
    if len(calls) == 3:
      raise KeyboardInterrupt  # As a kill during the third trial.
    return real_run(task, config, workdir, **kwargs)

  monkeypatch.setattr(runner, 'run', killed_in_the_third)
  out = str(tmp_path / 'sweep')
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(task, config, schema, out, dimensions, say=lambda *a: None,
                             extensions=EXTENSIONS)
  assert len(results.read(out)) == 2
  first_two = [os.path.getmtime(os.path.join(out, f'trial_{i:04d}', 'summary.json'))
               for i in range(2)]
  records = sweep.run_sweep(task, config, schema, out, dimensions, say=lambda *a: None,
                             extensions=EXTENSIONS)
  assert calls == ['trial_0000', 'trial_0001', 'trial_0002', 'trial_0002', 'trial_0003']
  assert sorted(r['trial'] for r in records) == [0, 1, 2, 3]
  assert first_two == [os.path.getmtime(os.path.join(out, f'trial_{i:04d}', 'summary.json'))
                       for i in range(2)]
  trials = sorted(d for d in os.listdir(out) if d.startswith('trial_'))
  assert len(trials) == 4
  seen = set()
  for name, point in zip(trials, sweep.grid(dimensions)):
    with open(os.path.join(out, name, 'summary.json')) as f:
      summary = json.load(f)
    rate, hidden = summary['overrides']['optimizer.learning_rate'], summary['overrides'][
        'model.hidden']
    assert rate == float(point['optimizer.learning_rate']) and hidden == [
        int(h) for h in point['model.hidden'].strip('(,)').split(',')]
    seen.add((rate, tuple(hidden)))
  assert len(seen) == 4
  with open(os.path.join(out, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['complete'] * 4
  for row, record in zip(rows, sorted(records, key=lambda r: r['trial'])):
    assert float(row['validation_accuracy']) == pytest.approx(record['value'], rel=1e-5)
  assert os.path.getsize(os.path.join(out, 'sweep.png')) > 5000
  with pytest.raises(ConfigError, match='different sweep'):
    sweep.run_sweep(task, config, schema, out, dimensions[:1], say=lambda *a: None,
                             extensions=EXTENSIONS)


@pytest.mark.slow
def test_optuna_prunes_a_hopeless_trial_and_resumes(tmp_path, monkeypatch):
  """Learning rates 3e-2 and 1e-2 (learn in 16 steps) and 1e-5 (does not): once 3 trials
  finished, a 1e-5 trial falls below their median at its first evaluation and stops there.
  The sweep is killed in its third trial and run again: 8 trials, none run twice."""
  optuna = pytest.importorskip('optuna')
  task, config, schema = _task_and_config(tmp_path)
  dimensions = [sweep.parse_dimension('optimizer.learning_rate', '3e-2,1e-2,1e-5')]
  out = str(tmp_path / 'optuna')
  calls, real_run = [], runner.run

  def killed_in_the_third(task, config, workdir, **kwargs):
    calls.append(os.path.basename(workdir))
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real_run(task, config, workdir, **kwargs)

  monkeypatch.setattr(runner, 'run', killed_in_the_third)
  run = lambda: sweep.run_sweep(task, config, schema, out, dimensions, mode='optuna', trials=8,
                                seed=0, say=lambda *a: None, extensions=EXTENSIONS)
  with pytest.raises(KeyboardInterrupt):
    run()
  records = run()
  assert len(records) == 8 and len({r['trial'] for r in records}) == 8
  study = optuna.load_study(study_name='sweep', storage=f'sqlite:///{out}/study.db')
  states = [t.state.name for t in study.trials]
  assert states.count('COMPLETE') + states.count('PRUNED') == 8 and states.count('FAIL') == 1
  pruned = [r for r in records if r['status'] == 'pruned']
  assert pruned and all(r['overrides']['optimizer.learning_rate'] == '1e-5' for r in pruned)
  assert all(r['steps'] < 16 for r in pruned)
  assert all(r['steps'] == 16 for r in records if r['status'] == 'complete')


def test_bad_sweep_flags_get_one_line(tmp_path):
  for flags, expected in (
      (['--sweep=grid', '--sweep.optimizer.lerning_rate=1,2'],
       "unknown config key 'optimizer.lerning_rate'"),
      (['--sweep=grid', '--sweep.optimizer.learning_rate=log:1e-4:1e-2'],
       'a grid sweep takes value lists'),
      (['--sweep=bayes', '--sweep.optimizer.learning_rate=1,2'], "sweep mode 'bayes'"),
      (['--sweep.optimizer.learning_rate=1,2'], 'need --sweep=grid')):
    result = subprocess.run([sys.executable, 'experiments/mnist.py', f'--workdir={tmp_path}/w',
                             *flags], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and '--sweep' in lines[0], lines
