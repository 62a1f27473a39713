"""Why a model decides what it does: gradient saliency, integrated gradients, SmoothGrad and
Grad-CAM for images; attention weights and rollout for the Transformers; integrated
gradients at the token embeddings for texts; pictures of them all (`explain.figures`).
`jaxmodels explain WORKDIR ...` runs them on a finished run."""
from jaxmodels.explain.attention import attention_rollout, attention_weights, cls_rollout
from jaxmodels.explain.grad_cam import grad_cam, upsample
from jaxmodels.explain.gradients import (INTEGRATION_RULES, input_gradients, integrated_gradients,
                                         integration_rule, smoothgrad)
from jaxmodels.explain.layer_outputs import apply_with_layer, last_feature_map, layer_outputs
from jaxmodels.explain.maps import (IMAGE_METHODS, TEXT_METHODS, image_maps, predicted_classes,
                                    token_heat)

__all__ = ['apply_with_layer', 'attention_rollout', 'attention_weights', 'cls_rollout', 'grad_cam',
           'image_maps', 'IMAGE_METHODS', 'input_gradients', 'integrated_gradients',
           'integration_rule', 'INTEGRATION_RULES', 'last_feature_map', 'layer_outputs',
           'predicted_classes', 'smoothgrad', 'TEXT_METHODS', 'token_heat', 'upsample']
