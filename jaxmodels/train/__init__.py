"""Training core: state, pure steps, losses, metrics, optimisers, the fit loop and its callbacks."""
from jaxmodels.train.callbacks import (Callback, EarlyStopping, LambdaCallback, LogWriter,
                                       TerminateOnNaN)
from jaxmodels.train.classification_report import classification_report, precision_recall_f1
from jaxmodels.train.evaluate import Evaluate, Evaluator, make_evaluate_fn, scalar_logs
from jaxmodels.train.cpu_path import auto_steps_per_dispatch
from jaxmodels.train.guards import NAN_POLICIES, PreemptionGuard, skip_nonfinite
from jaxmodels.train.loop import FitLoop, History, fit
from jaxmodels.train.losses import (classification_loss, sigmoid_binary_cross_entropy,
                                    softmax_cross_entropy)
from jaxmodels.train.metrics import (Mean, classification_metrics, confusion_matrix, correct, merge,
                                     summarize, top_k_correct)
from jaxmodels.train.model import Model, as_model, function_model, linen_model, nnx_model
from jaxmodels.train.optim import (decay_mask, lr_multiplier, lr_multiplier_value, make_optimizer,
                                   make_schedule, one_cycle, optimizer_from_config,
                                   set_lr_multiplier, warmup_cosine, with_lr_multiplier)
from jaxmodels.train.rollback import fit_with_rollback
from jaxmodels.train.state import TrainState, create_train_state, step_rngs
from jaxmodels.train.step import (TrainStep, make_eval_step, make_predict_fn, make_train_step,
                                  with_preprocess)

__all__ = ['as_model', 'auto_steps_per_dispatch', 'Callback', 'classification_loss',
           'classification_metrics', 'classification_report', 'confusion_matrix', 'correct',
           'create_train_state', 'decay_mask', 'EarlyStopping', 'Evaluate', 'Evaluator', 'fit',
           'fit_with_rollback', 'FitLoop', 'function_model', 'History', 'LambdaCallback',
           'linen_model', 'LogWriter', 'lr_multiplier', 'lr_multiplier_value', 'make_eval_step',
           'make_evaluate_fn', 'make_optimizer', 'make_predict_fn', 'make_schedule',
           'make_train_step', 'Mean', 'merge', 'Model', 'NAN_POLICIES', 'nnx_model', 'one_cycle',
           'optimizer_from_config', 'precision_recall_f1', 'PreemptionGuard', 'scalar_logs',
           'set_lr_multiplier', 'sigmoid_binary_cross_entropy', 'skip_nonfinite',
           'softmax_cross_entropy', 'step_rngs', 'summarize', 'TerminateOnNaN', 'top_k_correct',
           'TrainState', 'TrainStep', 'warmup_cosine', 'with_lr_multiplier', 'with_preprocess']
