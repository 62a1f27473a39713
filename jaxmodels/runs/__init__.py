"""What a run is, for the stages around training: its config (which model, which
extensions), its model card (`model.json`), its trained params (`TrainedRun`), and the
context that extensions of a running run see. It imports no stage and no task."""
from jaxmodels.runs.extension import Extension, RunContext, chain
from jaxmodels.runs.model_card import MODEL_CARD, inputs_from_raw, read_card, write_card
from jaxmodels.runs.model_config import (COMPUTE_DTYPES, build_model, build_module,
                                         model_arguments, model_options)
from jaxmodels.runs.trained import TrainedRun

__all__ = ['COMPUTE_DTYPES', 'Extension', 'MODEL_CARD', 'RunContext', 'TrainedRun',
           'build_model', 'build_module', 'chain', 'inputs_from_raw', 'model_arguments',
           'model_options', 'read_card', 'write_card']
