"""The shape of the code, checked: imports point one way, down a declared order of layers
(imports inside functions included); no module imports another's private names; the CPU
speed path is one module; the run is written once; library errors name config keys."""
import ast
import inspect
import pathlib

import jaxmodels as jm
from jaxmodels import console

PACKAGE = pathlib.Path(jm.__file__).parent

# The parts of jaxmodels/ (subpackages and top-level modules), lowest first. A module may
# import its own part and the parts of lower layers; never a sibling of its layer, never
# a part above. See README.md, "How the code is laid out".
LAYERS = (
    ('errors',),
    ('schema',),
    ('data', 'report', 'models', 'parallel', 'compilation_cache', 'host_memory'),
    ('pretrained', 'finetune'),
    ('train',),
    ('checkpoint',),
    ('runs',),
    ('compress', 'explain', 'serve'),
    ('tasks',),
    ('sweep',),
    ('commands', 'cli'),
    ('console',),
)
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _modules():
  return sorted(PACKAGE.rglob('*.py'))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts).removesuffix('.__init__')


def _is_module(name: str) -> bool:
  relative = pathlib.Path(*name.split('.')[1:])
  return (PACKAGE / relative).with_suffix('.py').is_file() or (PACKAGE / relative).is_dir()


def _imports(path: pathlib.Path) -> set[str]:
  """The jaxmodels modules that `path` imports, anywhere in it (functions included):
  `from jaxmodels.data import idx` counts as jaxmodels.data.idx when that is a module."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        names.add(full if _is_module(full) else node.module)
  return {n for n in names if n == 'jaxmodels' or n.startswith('jaxmodels.')}


def _part(module: str) -> str | None:
  bits = module.split('.')
  return bits[1] if len(bits) > 1 else None


def _graph() -> dict[str, set[str]]:
  return {_module_name(path): _imports(path) for path in _modules()}


def test_every_part_has_a_declared_layer():
  parts = {_part(_module_name(path)) for path in _modules()} - {None}
  assert parts == set(LEVEL), f'undeclared: {parts - set(LEVEL)}, gone: {set(LEVEL) - parts}'


def test_imports_point_down_the_declared_layers():
  upward = []
  for module, imported in _graph().items():
    source = _part(module)
    for target in map(_part, imported):
      if source and target and target != source and LEVEL[target] >= LEVEL[source]:
        upward.append(f'{module} -> jaxmodels.{target}')
  assert not upward, upward


def test_no_import_cycles_between_modules():
  graph = _graph()
  cycles, state = [], {}

  def visit(module, path):
    state[module] = 'open'
    for target in sorted(graph.get(module, ())):
      if target == module or target not in graph:
        continue
      if state.get(target) == 'open':
        cycles.append(' -> '.join(path[path.index(target):] + [target]))
      elif target not in state:
        visit(target, path + [target])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, cycles


def test_the_console_commands_live_in_the_command_layer():
  for module, _ in console.COMMANDS.values():
    assert _part(module) == 'commands', module
    assert (PACKAGE / 'commands' / f'{module.rsplit(".", 1)[1]}.py').is_file(), module


def test_no_module_imports_a_private_name_of_another():
  offenders = []
  for path in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('jaxmodels'):
        offenders += [f'{path.relative_to(PACKAGE)}: {node.module}.{a.name}' for a in node.names
                      if a.name.startswith('_')]
  assert not offenders, offenders


def test_one_module_decides_what_the_cpu_gets():
  branching = sorted(str(path.relative_to(PACKAGE)) for path in _modules()
                     if 'default_backend' in path.read_text())
  assert branching == ['train/cpu_path.py'], branching


def test_the_run_is_written_once_and_the_step_knows_no_model_library():
  runner = (PACKAGE / 'tasks' / 'runner.py').read_text()
  assert runner.count('def run(') == 1
  step_imports = _imports(PACKAGE / 'train' / 'step.py')
  assert not any(_part(m) == 'models' for m in step_imports), step_imports
  assert len(inspect.signature(jm.fit).parameters) <= 12


def test_library_errors_name_config_keys_not_command_line_flags():
  for path in _modules():
    if path.name == 'cli.py' or path.parent.name == 'commands':
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
        assert '--config' not in text and '--workdir' not in text, path
        assert 'see --help' not in text and 'same command' not in text, path
