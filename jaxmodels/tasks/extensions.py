"""The extensions every experiment applies and the default config they give a task: what the
experiments' command line (`cli`) and the commands that start runs (`retrain`) share."""
from jaxmodels.compress.extensions import MagnitudePruning, QuantizationAware
from jaxmodels.explain.run_report import SaliencyReport
from jaxmodels.tasks import runner
from jaxmodels.tasks.finetune import FineTune
from jaxmodels.tasks.init_from import InitFrom
from jaxmodels.tasks.sample_predictions import SamplePredictions


def default_extensions() -> tuple:
  """The extensions every experiment applies, in order; each is off until its config fields
  turn it on: start from other weights (init_from), fine-tune (finetune.*), train through
  int8 rounding (quantization.qat), prune (pruning.*), record test predictions
  (report.num_test_predictions) and add saliency.png (explain.*)."""
  return (InitFrom(), FineTune(), QuantizationAware(), MagnitudePruning(), SamplePredictions(),
          SaliencyReport())


def default_config(task):
  """The default config of an experiment of `task`: the run's, the task's and the default
  extensions' fields (what a config file's `get_config` starts from)."""
  return runner.default_config(task, default_extensions())
