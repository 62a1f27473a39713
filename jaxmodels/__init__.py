"""jaxmodels: pure-function Flax models and optax optimisers in jit-compiled train steps.

The small functions below compose into a training program; `jaxmodels.tasks`
has complete ones, and `experiments/` wraps those in command lines.
"""
from jaxmodels import data, models, parallel, report
from jaxmodels.compilation_cache import enable_compilation_cache
from jaxmodels.data import load_dataset, make_augment, normalize
from jaxmodels.errors import (CheckpointError, ConfigError, DataError, DataUnavailableError,
                              InputError, NonFiniteError, Preempted, UserError)
from jaxmodels.host_memory import reuse_host_memory
from jaxmodels.train import (Callback, EarlyStopping, Evaluate, History, LambdaCallback, LogWriter,
                             Mean, Model, TerminateOnNaN, TrainState, as_model,
                             classification_loss, classification_metrics, classification_report,
                             confusion_matrix, create_train_state, decay_mask, fit,
                             function_model, linen_model, make_eval_step, make_evaluate_fn,
                             make_optimizer, make_predict_fn, make_schedule, make_train_step,
                             merge, nnx_model, one_cycle, precision_recall_f1,
                             sigmoid_binary_cross_entropy, softmax_cross_entropy, step_rngs,
                             summarize, top_k_correct, warmup_cosine, with_preprocess)

__all__ = ['as_model', 'Callback', 'checkpoint', 'CheckpointError', 'classification_loss',
           'classification_metrics', 'classification_report', 'ConfigError', 'confusion_matrix',
           'create_train_state', 'data', 'DataError', 'DataUnavailableError', 'decay_mask',
           'EarlyStopping', 'enable_compilation_cache', 'Evaluate', 'fit', 'function_model',
           'History', 'InputError', 'LambdaCallback', 'linen_model', 'load_dataset', 'LogWriter',
           'make_augment', 'make_eval_step', 'make_evaluate_fn', 'make_optimizer',
           'make_predict_fn', 'make_schedule', 'make_train_step', 'Mean', 'merge', 'Model',
           'models', 'nnx_model', 'NonFiniteError', 'normalize', 'one_cycle', 'parallel',
           'precision_recall_f1', 'Preempted', 'report', 'reuse_host_memory',
           'sigmoid_binary_cross_entropy', 'softmax_cross_entropy', 'step_rngs', 'summarize',
           'TerminateOnNaN', 'top_k_correct', 'TrainState', 'UserError', 'warmup_cosine',
           'with_preprocess']

__version__ = '0.1.0'


def __getattr__(name):
  # `jaxmodels.checkpoint` loads orbax (a quarter of a second): only when first used.
  if name == 'checkpoint':
    import importlib
    return importlib.import_module('jaxmodels.checkpoint')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
