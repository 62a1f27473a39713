"""Runs a sweep: each trial is `runner.run` in SWEEP_DIR/trial_NNNN with the trial's
overrides (recorded in its summary.json), and its record goes to results.jsonl / .csv and
the plot. A sweep resumes: started again on the same directory, the trials with a record are
not run again; an interrupted trial resumes from its own checkpoint (grid, random) or is
asked again (optuna)."""
import json
import os

from jaxmodels.errors import ConfigError
from jaxmodels.sweep import results
from jaxmodels.sweep.space import Dimension, grid, random_trials
from jaxmodels.sweep.trial import TRIAL_PREFIX, run_trial, trial_dir

MODES = ('grid', 'random', 'optuna')
PLAN_FILE = 'sweep.json'


def run_sweep(task, config, schema, sweep_dir: str, dimensions: list[Dimension], *,
              mode: str = 'grid', trials: int = 8, metric: str = 'accuracy',
              direction: str = 'maximize', seed: int = 0, say=print,
              extensions=()) -> list[dict]:
  """Runs (or resumes) the sweep in `sweep_dir`; returns its records, one per finished trial.
  Every trial is `runner.run` with `extensions`."""
  if mode not in MODES:
    raise ConfigError(f'sweep mode {mode!r}: choose one of {", ".join(MODES)}', key='sweep')
  if not dimensions:
    raise ConfigError('a sweep needs at least one swept config key and its values', key='sweep')
  for dimension in dimensions:
    try:
      schema.check_key(dimension.key)
    except ConfigError as e:
      raise ConfigError(str(e), key=f'sweep.{dimension.key}') from None
  os.makedirs(sweep_dir, exist_ok=True)
  plan = {'mode': mode, 'metric': metric, 'direction': direction, 'seed': seed,
          'dimensions': [vars(d) | {'choices': list(d.choices)} for d in dimensions]}
  if mode == 'optuna':
    from jaxmodels.sweep import optuna_study
    _check_plan(sweep_dir, {**plan, 'trials': trials})
    records = optuna_study.run(task, config, schema, sweep_dir, dimensions, trials=trials,
                               metric=metric, direction=direction, seed=seed, say=say,
                               extensions=extensions)
  else:
    points = grid(dimensions) if mode == 'grid' else random_trials(dimensions, trials, seed)
    _check_plan(sweep_dir, {**plan, 'trials': points})
    records = results.read(sweep_dir)
    done = {r['trial'] for r in records}
    for number, overrides in enumerate(points):
      if number in done:
        continue
      say(f'{TRIAL_PREFIX}{number:04d} ({number + 1}/{len(points)}): '
          + ' '.join(f'{k}={v}' for k, v in overrides.items()))
      record = run_trial(task, config, schema, trial_dir(sweep_dir, number), overrides, metric,
                         extensions=extensions)
      records.append({'trial': number, **record})
      results.write(sweep_dir, records, dimensions, metric, direction)
  results.write(sweep_dir, records, dimensions, metric, direction)
  best = results.best(records, direction)
  if best is not None:
    say(f'best: {TRIAL_PREFIX}{best["trial"]:04d}, validation {metric} {best["value"]:.4f}: '
        + ' '.join(f'{k}={v}' for k, v in best['overrides'].items()))
  return records


def _check_plan(sweep_dir: str, plan: dict) -> None:
  """Writes the plan on the first run; a later run must ask for the same sweep."""
  path = os.path.join(sweep_dir, PLAN_FILE)
  plan = json.loads(json.dumps(plan))
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if json.load(f) != plan:
        raise ConfigError(f'{sweep_dir} holds a different sweep ({PLAN_FILE}): resume it with '
                          'the same keys and values, or choose another workdir', key='workdir')
    return
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(plan, f, indent=2)
  os.replace(path + '.tmp', path)
