"""Fine-tuning: LoRA adapters (qwix) and their merge, freezing params by path and
layer-wise learning-rate decay (optax). `tasks/finetune.py` makes them config fields of
every run (finetune.*)."""
from jaxmodels.finetune.lora import is_adapter, kernel_modules, merge_lora, with_lora
from jaxmodels.finetune.trainable import (freeze, frozen_rule, layer_decay_factors, layer_index,
                                      num_layers_of, param_counts, scale_by_layer_decay)

__all__ = ['freeze', 'frozen_rule', 'is_adapter', 'kernel_modules', 'layer_decay_factors',
           'layer_index', 'merge_lora', 'num_layers_of', 'param_counts', 'scale_by_layer_decay',
           'with_lora']
