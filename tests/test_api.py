"""The public API is what the README says it is: every package of jaxmodels declares
`__all__`, each name in it exists, and the names README.md lists under the package's
heading in "Public API" are exactly those."""
import importlib
import pathlib
import pkgutil
import re

import jaxmodels

README = pathlib.Path(__file__).parents[1] / 'README.md'


def _packages() -> list[str]:
  return ['jaxmodels'] + [f'jaxmodels.{info.name}' for info in
                          pkgutil.iter_modules(jaxmodels.__path__) if info.ispkg]


def _listed_in_readme() -> dict[str, set[str]]:
  """{package: the backquoted names in the bullets under its '### `package`' heading}."""
  text = README.read_text()
  section = text.split('\n## Public API\n', 1)[1].split('\n## ', 1)[0]
  listed = {}
  for block in section.split('\n### ')[1:]:
    heading, body = block.split('\n', 1)
    bullets = '\n'.join(line for line in body.splitlines() if line.startswith(('- ', '  ')))
    listed[re.match(r'`([\w.]+)`', heading).group(1)] = set(re.findall(r'`(\w+)`', bullets))
  return listed


def test_every_package_exports_exactly_what_the_readme_lists():
  listed = _listed_in_readme()
  assert sorted(listed) == sorted(_packages())
  for name in _packages():
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), f'{name}.__all__ repeats a name'
    assert exported == listed[name], (name, exported ^ listed[name])
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing, (name, missing)
