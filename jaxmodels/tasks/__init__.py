"""Complete runs: `runner.run(task, config, workdir, extensions=...)` for any `Task`, a small
spec of its data, model arguments, loss, metrics and report; one module per task
(image_classification, text_classification, language_model, distillation), and the
extensions that belong to training itself (init_from, finetune, sample_predictions)."""
from jaxmodels.tasks.registry import load_test_split, task_named, task_names
from jaxmodels.tasks.runner import default_config, run, schema_of, validate
from jaxmodels.tasks.spec import Task, TaskData

__all__ = ['default_config', 'load_test_split', 'run', 'schema_of', 'Task', 'task_named',
           'task_names', 'TaskData', 'validate']
