"""Training core: state, pure steps, losses, metrics, optimisers, the fit loop and its callbacks."""
from jaxmodels.train.callbacks import (Callback, EarlyStopping, LambdaCallback, LogWriter,
                                       TerminateOnNaN)
from jaxmodels.train.classification_report import classification_report, precision_recall_f1
from jaxmodels.train.evaluate import Evaluate, Evaluator, make_evaluate_fn, scalar_logs
from jaxmodels.train.guards import NAN_POLICIES, PreemptionGuard, skip_nonfinite
from jaxmodels.train.cpu_path import auto_steps_per_dispatch
from jaxmodels.train.loop import FitLoop, History, fit
from jaxmodels.train.losses import (classification_loss, mean_squared_error,
                                    sigmoid_binary_cross_entropy, softmax_cross_entropy)
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
