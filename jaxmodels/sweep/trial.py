"""One trial of a sweep: an ordinary run in its own workdir with the trial's overrides; a
bad point of the space is a failed record, not a stopped sweep."""
import copy
import os
import time

from jaxmodels.errors import USER_ERRORS, ConfigError, NonFiniteError
from jaxmodels.tasks import runner

TRIAL_PREFIX = 'trial_'


def trial_dir(sweep_dir: str, number: int) -> str:
  return os.path.join(sweep_dir, f'{TRIAL_PREFIX}{number:04d}')


def run_trial(task, config, schema, workdir: str, overrides: dict[str, str], metric: str,
              callbacks=(), extensions=()) -> dict:
  """One run with `overrides` (key -> text) on a copy of `config`, applying `extensions`: its
  record (status 'complete' or 'failed', the validation `metric` as 'value', test metrics,
  wall time)."""
  config = copy.deepcopy(config)
  record = {'overrides': dict(overrides), 'workdir': workdir}
  start = time.perf_counter()
  try:
    overridden = schema.apply_overrides(config, list(overrides.items()))
    summary = runner.run(task, config, workdir, extensions=extensions, overrides=overridden,
                         callbacks=callbacks)
  except (*USER_ERRORS, NonFiniteError) as e:  # A bad point of the space: the sweep goes on.
    return {**record, 'status': 'failed', 'value': None, 'error': str(e),
            'wall_seconds': time.perf_counter() - start}
  validation = summary.get('validation') or {}
  if metric not in validation:
    raise ConfigError(f'the sweep metric {metric!r} is not among the validation metrics '
                      f'({", ".join(sorted(validation)) or "none: set data.val_fraction > 0"})',
                      key='sweep_metric')
  return {**record, 'status': 'complete', 'value': float(validation[metric]),
          'test': summary['test'], 'steps': summary['steps'],
          'wall_seconds': time.perf_counter() - start}
