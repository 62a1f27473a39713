"""A config schema: each field's default, check, help and resume policy, in one table.

    SCHEMA = Schema({'train.batch_size': Field(128, 'Global batch size.', positive), ...})
    config = SCHEMA.default_config()     # an ml_collections.ConfigDict
    SCHEMA.validate(config)              # ConfigError (one line) for the first bad value
    SCHEMA.resumable('train.num_steps')  # may this key change when a run resumes?
    SCHEMA.describe(config)              # the --help text
    SCHEMA.apply_overrides(config, [('train.batch_size', '64')])   # typed by the field
    steps_of(config.train, steps_per_epoch, 'num')   # a duration: num_steps or num_epochs

Keys are dotted paths. A section listed in `open_sections` (the model's options)
takes any key; the code that reads it checks those.
"""
import ast
import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxmodels.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Field:
  """default: its value and type. check(value) -> bool, with `requirement` completing
  '<key> <requirement>' when it fails. resumable: may change between a run and its resume."""
  default: Any
  help: str
  check: Callable[[Any], bool] | None = None
  requirement: str = ''
  resumable: bool = False


def one_of(*options) -> dict:
  """Keyword arguments of a Field whose value must be one of `options`."""
  return dict(check=lambda v: v in options, requirement=f'must be one of {", ".join(options)}')


def at_least(low, *, strict: bool = False) -> dict:
  if strict:
    return dict(check=lambda v: v > low, requirement=f'must be > {low}')
  return dict(check=lambda v: v >= low, requirement=f'must be >= {low}')


def _compiles(text: str) -> bool:
  try:
    re.compile(text)
  except re.error:
    return False
  return True


REGEX = dict(check=_compiles, requirement='must be a valid regular expression')


def share(*, zero_ok: bool = False) -> dict:
  """Keyword arguments of a Field that is a share of something: in (0, 1), or [0, 1)."""
  if zero_ok:
    return dict(check=lambda v: 0 <= v < 1, requirement='must be in [0, 1)')
  return dict(check=lambda v: 0 < v < 1, requirement='must be in (0, 1)')


def flatten(tree, prefix: str = '') -> dict:
  """{'train.batch_size': 128, ...} for every leaf of a (nested) mapping or ConfigDict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _same_kind(default, value) -> bool:
  if default is None or value is None:
    return True
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def _kind(value) -> str:
  return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}.get(
      type(value), 'a Python literal such as (8, 16)')


def parse_value(text: str, like):
  """The value of a command-line string, of the type of `like` (the field's current value)."""
  if isinstance(like, bool):
    lowered = text.strip().lower()
    if lowered not in ('true', 'false', '1', '0', 'yes', 'no'):
      raise ValueError(text)
    return lowered in ('true', '1', 'yes')
  if isinstance(like, (int, float)):
    return type(like)(text)
  if isinstance(like, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if like is None:
      return text
    raise
  if isinstance(like, (tuple, list)) and not isinstance(value, (tuple, list)):
    raise ValueError(text)
  return value


class Schema:
  """The fields of a config (see the module doc). `a + b` is a schema with both tables,
  b's entries winning; `with_defaults({key: value})` changes some defaults."""

  def __init__(self, fields: Mapping[str, Field], open_sections=('model',)):
    self.fields = dict(fields)
    self.open_sections = tuple(open_sections)

  def __add__(self, other: 'Schema') -> 'Schema':
    return Schema({**self.fields, **other.fields},
                  tuple(dict.fromkeys(self.open_sections + other.open_sections)))

  def with_defaults(self, defaults: Mapping[str, Any]) -> 'Schema':
    unknown = set(defaults) - set(self.fields)
    if unknown:
      raise KeyError(f'no such fields: {sorted(unknown)}')
    return Schema({k: dataclasses.replace(f, default=defaults[k]) if k in defaults else f
                   for k, f in self.fields.items()}, self.open_sections)

  def default_config(self) -> ml_collections.ConfigDict:
    nested = {}
    for key, field in self.fields.items():
      *parents, leaf = key.split('.')
      node = nested
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = field.default
    return ml_collections.ConfigDict(nested)

  def _is_open(self, key: str) -> bool:
    return any(key.startswith(section + '.') for section in self.open_sections)

  def check_key(self, key: str) -> None:
    """ConfigError naming the closest keys when `key` is neither a field nor a section."""
    if key in self.fields or self._is_open(key) or any(k.startswith(key + '.') for k in self.fields):
      return
    close = difflib.get_close_matches(key, self.fields, n=3)
    hint = f'did you mean {" or ".join(close)}?' if close else 'no field has a similar name'
    raise ConfigError(f'unknown config key {key!r}; {hint}', key=key)

  def validate(self, config) -> None:
    """Raises ConfigError (one line, with `key`) for an unknown key, a missing key, a value of
    the wrong type, or the first value whose check fails."""
    values = flatten(config)
    for key in values:
      self.check_key(key)
    for key, field in self.fields.items():
      if key not in values:
        raise ConfigError(f'the config has no {key}: build it from the default config', key=key)
      value = values[key]
      if not _same_kind(field.default, value):
        raise ConfigError(f'{key} must be {_kind(field.default)}, got {value!r}', key=key)
      if field.check is not None and not field.check(value):
        raise ConfigError(f'{key} {field.requirement}, got {value!r}', key=key)

  def apply_overrides(self, config, overrides: list[tuple[str, str]]) -> dict:
    """Sets each (key, text) in `config`, parsed as the type of the value it replaces (or of
    the field's default); returns {key: the value it now has}. ConfigError for an unknown key
    or a text that cannot be read as that type."""
    values = flatten(config)
    for key, text in overrides:
      self.check_key(key)
      *parents, leaf = key.split('.')
      node = config
      for part in parents:
        node = node[part]
      like = values[key] if key in values else (self.fields[key].default if key in self.fields
                                                 else None)
      try:
        value = parse_value(text, like)
      except (ValueError, SyntaxError):
        raise ConfigError(f'cannot read {text!r} as the {type(like).__name__} that {key} takes',
                          key=key) from None
      with node.unlocked():  # Model options the config file did not set are new keys.
        node[leaf] = tuple(value) if isinstance(like, tuple) and isinstance(value, list) else value
    values = flatten(config)
    return {key: values[key] for key in dict(overrides)}

  def resumable(self, key: str) -> bool:
    field = self.fields.get(key)
    return field is not None and field.resumable

  def describe(self, config) -> str:
    """One line per key: its value in `config`, its help, and whether a resume may change it."""
    values = flatten(config)
    lines = []
    for key, value in values.items():
      field = self.fields.get(key)
      help_text = field.help if field else 'model option'
      resume = ' [may change on resume]' if field and field.resumable else ''
      lines.append(f'  {key} = {value!r}\n      {help_text}{resume}')
    return '\n'.join(lines)


def steps_of(config, steps_per_epoch: int, name: str, default: int = 0) -> int:
  """A duration in steps from `<name>_steps` or `<name>_epochs` of a config section (steps
  win; `default` when both are 0): `steps_of(config.train, 469, 'num')`."""
  steps, epochs = config.get(f'{name}_steps', 0), config.get(f'{name}_epochs', 0)
  return int(steps) if steps else (round(epochs * steps_per_epoch) if epochs else default)
