"""The space a sweep searches: one `Dimension` per swept config key.

On the command line each is `--sweep.KEY=SPEC`, where SPEC is a list of values
`1e-3,3e-3,1e-2` (commas inside brackets belong to the value: `(16,32),(32,64)`), or a
range for random and optuna sweeps: `log:1e-4:1e-2` (log-uniform), `uniform:0:0.3`,
`int:32:256`. Values stay text until a trial's config parses them as the field's type.
"""
import dataclasses
import itertools
import math

import numpy as np

from jaxmodels.errors import ConfigError

RANGE_KINDS = ('log', 'uniform', 'int')


@dataclasses.dataclass(frozen=True)
class Dimension:
  """key: the config key; choices: value texts (a list), or kind + low/high (a range)."""
  key: str
  choices: tuple[str, ...] = ()
  kind: str = 'choice'
  low: float = 0.0
  high: float = 0.0

  @property
  def is_range(self) -> bool:
    return self.kind != 'choice'

  def sample(self, rng: np.random.Generator) -> str:
    if self.kind == 'choice':
      return self.choices[rng.integers(len(self.choices))]
    if self.kind == 'int':
      return str(int(rng.integers(int(self.low), int(self.high) + 1)))
    if self.kind == 'log':
      return repr(float(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
    return repr(float(rng.uniform(self.low, self.high)))


def split_values(text: str) -> list[str]:
  """'a,(1,2),[3]' -> ['a', '(1,2)', '[3]']: commas split only outside brackets."""
  parts, depth, current = [], 0, ''
  for char in text:
    depth += char in '([{'
    depth -= char in ')]}'
    if char == ',' and depth == 0:
      parts.append(current.strip())
      current = ''
    else:
      current += char
  parts.append(current.strip())
  return parts


def parse_dimension(key: str, spec: str) -> Dimension:
  """The Dimension of `--sweep.KEY=SPEC`; ConfigError (naming the key) if SPEC is malformed."""
  kind, _, bounds = spec.partition(':')
  if kind in RANGE_KINDS:
    try:
      low, high = (float(b) for b in bounds.split(':'))
    except ValueError:
      raise ConfigError(f'sweep range {spec!r} for {key}: write {kind}:LOW:HIGH', key=f'sweep.{key}') from None
    if not low < high or (kind == 'log' and low <= 0):
      raise ConfigError(f'sweep range {spec!r} for {key}: need LOW < HIGH'
                        f'{" and LOW > 0" if kind == "log" else ""}', key=f'sweep.{key}')
    return Dimension(key, kind=kind, low=low, high=high)
  values = split_values(spec)
  if not all(values):
    raise ConfigError(f'sweep values {spec!r} for {key}: an empty value; write V1,V2,...',
                      key=f'sweep.{key}')
  if len(set(values)) != len(values):
    raise ConfigError(f'sweep values {spec!r} for {key} repeat a value', key=f'sweep.{key}')
  return Dimension(key, choices=tuple(values))


def grid(dimensions: list[Dimension]) -> list[dict[str, str]]:
  """Every combination of the dimensions' values, the last key varying fastest."""
  ranges = [d.key for d in dimensions if d.is_range]
  if ranges:
    raise ConfigError(f'a grid sweep takes value lists, not ranges ({", ".join(ranges)}): use '
                      'random or optuna', key=f'sweep.{ranges[0]}')
  keys = [d.key for d in dimensions]
  return [dict(zip(keys, values)) for values in itertools.product(*(d.choices
                                                                     for d in dimensions))]


def random_trials(dimensions: list[Dimension], count: int, seed: int) -> list[dict[str, str]]:
  """`count` trials drawn independently (the same for the same seed)."""
  rng = np.random.default_rng(seed)
  return [{d.key: d.sample(rng) for d in dimensions} for _ in range(count)]
