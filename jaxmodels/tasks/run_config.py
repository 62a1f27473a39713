"""The config fields every run has, whatever its task: each with its default, its check, its
help and whether it may change when a run resumes. Tasks add their own (data.name, ...), and
so do the extensions a run is given (`runs.Extension.schema`)."""
from jaxmodels.runs.model_config import COMPUTE_DTYPES
from jaxmodels.schema import Field, Schema, at_least, one_of, share
from jaxmodels.train.guards import NAN_POLICIES
from jaxmodels.train.optim import OPTIMIZERS, SCHEDULES

STRATEGIES = ('jit', 'shard_map')
POSITIVE = at_least(0, strict=True)
NOT_NEGATIVE = at_least(0)


def _resumable(default, help_text, **check) -> Field:
  return Field(default, help_text, resumable=True, **check)


RUN_SCHEMA = Schema({
    'seed': Field(0, 'Seed of the initial params, the data order, dropout and augmentation.'),
    'data.num_train': Field(0, 'Use only the first N training examples (0: all of them). Counts '
                            'the whole run, whatever the number of processes.', **NOT_NEGATIVE),
    'data.num_test': Field(0, 'Use only the first N test examples (0: all).', **NOT_NEGATIVE),
    'data.val_fraction': Field(0.1, 'Share of the training examples held out as the validation '
                               'split (evaluation during training, early stopping, keep-best); '
                               '0 turns it off.', **share(zero_ok=True)),
    'model.name': Field('', 'The model (see models.MODELS); other model.* keys are its options.'),
    'optimizer.name': Field('adamw', 'adamw, adam or sgd (momentum, Nesterov).',
                            **one_of(*OPTIMIZERS)),
    'optimizer.learning_rate': Field(1e-3, 'Peak learning rate.', **POSITIVE),
    'optimizer.schedule': Field('warmup_cosine', 'constant, warmup_cosine or one_cycle.',
                                **one_of(*SCHEDULES)),
    'optimizer.warmup_epochs': Field(0.0, 'Linear warmup length in epochs (warmup_cosine).',
                                     **NOT_NEGATIVE),
    'optimizer.warmup_steps': Field(0, 'Linear warmup length in steps; wins over warmup_epochs.',
                                    **NOT_NEGATIVE),
    'optimizer.weight_decay': Field(1e-4, 'Decoupled (adamw) or L2 (adam, sgd) weight decay on '
                                    'kernels and embeddings.', **NOT_NEGATIVE),
    'optimizer.momentum': Field(0.9, 'SGD momentum.', **NOT_NEGATIVE),
    'optimizer.clip_norm': Field(0.0, 'Clip the global gradient norm to this (0: off).',
                                 **NOT_NEGATIVE),
    'train.batch_size': Field(128, 'Global batch size: all devices of all processes.', **POSITIVE),
    'train.num_epochs': _resumable(0.0, 'Length of the run in epochs (when num_steps is 0).',
                                   **NOT_NEGATIVE),
    'train.num_steps': _resumable(0, 'Length of the run in steps; wins over num_epochs.',
                                  **NOT_NEGATIVE),
    'train.micro_batches': _resumable(0, 'Accumulate gradients over this many slices of each '
                                      'batch: one update, the memory of one slice. 0: '
                                      'automatic (slices of 128 or 64 on one CPU device, for '
                                      'models without batch statistics).', **NOT_NEGATIVE),
    'train.steps_per_dispatch': _resumable(0, 'Train steps run per call to the devices (0: '
                                           'automatic, see train.loop.auto_steps_per_dispatch).',
                                           **NOT_NEGATIVE),
    'train.log_every_steps': _resumable(100, 'Log (and sync with the host) every N steps.',
                                        **POSITIVE),
    'train.eval_every_steps': _resumable(0, 'Evaluate the validation split every N steps (0: '
                                         'every epoch).', **NOT_NEGATIVE),
    'train.eval_batch_size': _resumable(1000, 'Batch size of evaluation.', **POSITIVE),
    'train.progress': _resumable(True, 'Show a progress bar.'),
    'early_stopping.patience': _resumable(0, 'Stop after N evaluations without an improvement of '
                                          'checkpoint.best_metric (0: off); the best checkpoint '
                                          'is then the result.', **NOT_NEGATIVE),
    'early_stopping.min_delta': _resumable(0.0, 'The least change that counts as an improvement.',
                                           **NOT_NEGATIVE),
    'parallel.mesh.data': _resumable(-1, "Mesh axis 'data' (-1: the devices left over)."),
    'parallel.mesh.fsdp': _resumable(1, "Mesh axis 'fsdp': params and optimiser state split "
                                     'this many ways (the batch too).'),
    'parallel.mesh.model': _resumable(1, "Mesh axis 'model': tensor parallelism for models with "
                                      'logical axis names.'),
    'parallel.strategy': _resumable('jit', "'jit': GSPMD from shardings; 'shard_map': a "
                                    'per-device step with an explicit pmean.',
                                    **one_of(*STRATEGIES)),
    'parallel.fsdp_min_size': _resumable(2**14, 'Leaves with fewer elements stay replicated '
                                         'under FSDP.', **POSITIVE),
    'precision.compute_dtype': Field('float32', 'bfloat16: bf16 compute, float32 params and '
                                     'optimiser state.', **one_of(*COMPUTE_DTYPES)),
    'checkpoint.every_steps': _resumable(0, 'Save every N steps (0: every epoch); runs also '
                                         'save after each evaluation and at the end.',
                                         **NOT_NEGATIVE),
    'checkpoint.every_minutes': _resumable(10.0, 'Also save when this long has passed (0: off).',
                                           **NOT_NEGATIVE),
    'checkpoint.keep_last': _resumable(3, 'Keep the newest N checkpoints.', **at_least(1)),
    'checkpoint.keep_best': _resumable(1, 'Also keep the best N by checkpoint.best_metric.',
                                       **NOT_NEGATIVE),
    'checkpoint.best_metric': _resumable('accuracy', 'The validation metric that picks the best '
                                         'checkpoints and that early stopping watches.'),
    'checkpoint.best_mode': _resumable('max', "'max' or 'min': which way is better.",
                                       **one_of('max', 'min')),
    'checkpoint.async_save': _resumable(True, 'Write checkpoints in the background.'),
    'resume': _resumable('auto', "'auto': continue from the workdir's checkpoints if the config "
                         "matches; 'force': continue even if it does not.",
                         **one_of('auto', 'force')),
    'nan.policy': _resumable('stop', "On a NaN/inf loss: 'stop' (exit code 3), 'skip' the "
                             "update, or 'rollback' to the last checkpoint with a lower rate.",
                             **one_of(*NAN_POLICIES)),
    'nan.max_rollbacks': _resumable(3, 'Give up after this many rollbacks.', **NOT_NEGATIVE),
    'nan.lr_factor': _resumable(0.5, 'Learning-rate multiplier per rollback.', **share()),
})
