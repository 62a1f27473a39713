"""Hyper-parameter sweeps over config overrides: a grid, a seeded random search, or optuna's
TPE with median pruning. Every trial is an ordinary run in its own workdir."""
from jaxmodels.sweep.space import Dimension, grid, parse_dimension, random_trials
from jaxmodels.sweep.study import TRIAL_PREFIX, run_sweep

__all__ = ['Dimension', 'TRIAL_PREFIX', 'grid', 'parse_dimension', 'random_trials', 'run_sweep']
