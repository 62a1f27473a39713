"""The shape of the code, checked: no module imports another's private names, models/ and
data/ import nothing else from the package, and the run is written once (one runner of at
most 250 lines, task specs of at most 80, a fit of at most 120 lines and 12 parameters)."""
import ast
import inspect
import pathlib

import jaxmodels as jm

PACKAGE = pathlib.Path(jm.__file__).parent


def _modules():
  return sorted(PACKAGE.rglob('*.py'))


def test_no_module_imports_a_private_name_of_another():
  offenders = []
  for path in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('jaxmodels'):
        offenders += [f'{path.relative_to(PACKAGE)}: {node.module}.{a.name}' for a in node.names
                      if a.name.startswith('_')]
  assert not offenders, offenders


def test_models_and_data_import_nothing_else_from_the_package():
  for layer in ('models', 'data'):
    for path in (PACKAGE / layer).rglob('*.py'):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('jaxmodels'):
          assert node.module.startswith(f'jaxmodels.{layer}'), (path, node.module)


def test_one_runner_small_task_specs_and_a_lean_fit():
  lines = lambda name: len((PACKAGE / 'tasks' / name).read_text().splitlines())
  assert lines('runner.py') <= 250
  for task in ('image_classification.py', 'text_classification.py', 'language_model.py'):
    assert lines(task) <= 80, task
  source = inspect.getsource(jm.fit)
  assert len(source.splitlines()) <= 120
  assert len(inspect.signature(jm.fit).parameters) <= 12


def test_library_errors_name_config_keys_not_command_line_flags():
  for path in _modules():
    if path.name == 'cli.py':
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        assert '--config' not in node.value and '--workdir' not in node.value, path
