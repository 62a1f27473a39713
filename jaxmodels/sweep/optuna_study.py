"""The optuna backend of a sweep: TPE sampling, median pruning on the validation metric
after each evaluation, and the study in SWEEP_DIR/study.db (sqlite), so a sweep resumes."""
import os

from jaxmodels.errors import ConfigError
from jaxmodels.sweep import results
from jaxmodels.sweep.space import Dimension
from jaxmodels.sweep.trial import run_trial, trial_dir
from jaxmodels.train.callbacks import Callback

STUDY_FILE = 'study.db'
STARTUP_TRIALS = 3  # Trials run to the end before the pruner compares against their median.


class ReportToTrial(Callback):
  """Reports the validation metric of each evaluation to the optuna trial, and stops the
  run when the median pruner says the trial is worse than the median of the earlier ones
  at the same step."""

  def __init__(self, trial, metric: str):
    self.trial, self.metric, self.pruned = trial, metric, False

  def on_eval_end(self, step, logs, state):
    if self.metric in logs:
      self.trial.report(float(logs[self.metric]), step)
      if self.trial.should_prune():
        self.pruned = self.stop_training = True


def suggest(trial, dimension: Dimension) -> str:
  """The trial's value of `dimension`, as the text a config override takes."""
  key = dimension.key
  if dimension.kind == 'choice':
    return trial.suggest_categorical(key, list(dimension.choices))
  if dimension.kind == 'int':
    return str(trial.suggest_int(key, int(dimension.low), int(dimension.high)))
  return repr(trial.suggest_float(key, dimension.low, dimension.high,
                                  log=dimension.kind == 'log'))


def run(task, config, schema, sweep_dir: str, dimensions: list[Dimension], *, trials: int,
        metric: str, direction: str, seed: int, say, extensions=()) -> list[dict]:
  try:
    import optuna
  except ImportError:
    raise ConfigError('the optuna sweep needs optuna: pip install -e ".[sweep]"',
                      key='sweep') from None
  from optuna.trial import TrialState
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(
      study_name='sweep', storage=f'sqlite:///{os.path.abspath(sweep_dir)}/{STUDY_FILE}',
      load_if_exists=True, direction=direction, sampler=optuna.samplers.TPESampler(seed=seed),
      pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS))
  # Trials a killed sweep left running: marked failed, their points asked again.
  for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    study.tell(stale.number, state=TrialState.FAIL)
    study.enqueue_trial(stale.params)
  records = results.read(sweep_dir)
  while len(records) < trials:
    trial = study.ask()
    overrides = {d.key: suggest(trial, d) for d in dimensions}
    say(f'trial_{trial.number:04d} ({len(records) + 1}/{trials}): '
        + ' '.join(f'{k}={v}' for k, v in overrides.items()))
    reporter = ReportToTrial(trial, metric)
    record = run_trial(task, config, schema, trial_dir(sweep_dir, trial.number), overrides,
                       metric, callbacks=[reporter], extensions=extensions)
    if record['status'] == 'failed':
      study.tell(trial, state=TrialState.FAIL)
    elif reporter.pruned:
      record['status'] = 'pruned'
      study.tell(trial, state=TrialState.PRUNED)
      say(f'  pruned at step {record["steps"]}')
    else:
      study.tell(trial, record['value'])
    records.append({'trial': trial.number, **record})
    results.write(sweep_dir, records, dimensions, metric, direction)
  return records
