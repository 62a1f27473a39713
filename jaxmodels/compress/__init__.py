"""Compression: int8 quantisation (post-training and quantisation-aware, with qwix),
magnitude and structured channel pruning, and the measurements that compare them.
Distillation is a task (`jaxmodels.tasks.distillation`) built on `compress.distill`."""
from jaxmodels.compress.pruning import (magnitude_masks, magnitude_pruning, polynomial_sparsity,
                                        pruned_counts, sparsity_report)
from jaxmodels.compress.quantize import (SCHEMES, QuantizedModel, is_quantized, qat_module,
                                         quantization_rules, quantize, quantize_params,
                                         quantize_run, quantized_module, weight_bytes)

__all__ = ['is_quantized', 'magnitude_masks', 'magnitude_pruning', 'polynomial_sparsity',
           'pruned_counts', 'qat_module', 'quantization_rules', 'quantize', 'quantize_params',
           'quantize_run', 'quantized_module', 'QuantizedModel', 'SCHEMES', 'sparsity_report',
           'weight_bytes']
