r"""Name maps as data: regex rules from a checkpoint's tensor names to jaxmodels' param paths,
each with the layout change it needs (transpose, reshape to the param's shape, split into
parts), applied by `map_tensors`.

    Rule(r'h\.(\d+)\.attn\.c_attn\.weight', r'decoder/layer\1/attention/{part}/kernel',
         reshape=True, split=('query', 'key', 'value'))
"""
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np


class Rule(NamedTuple):
  """A tensor whose name fullmatches `pattern` becomes the param `target` (a template with
  the pattern's groups, \\1 ...). transpose: axes permutation applied first (a PyTorch
  Linear's (out, in) -> (in, out)). split: the last axis cut into equal parts, one per
  name, put into the template's {part} (GPT-2's fused c_attn). reshape: the result may be
  reshaped to the param's shape (same size: (E, H * D) -> (E, H, D)). resize_grid: a
  position table whose patch grid is resized to the param's (ViT at another image size)."""
  pattern: str
  target: str
  transpose: tuple[int, ...] | None = None
  reshape: bool = False
  split: tuple[str, ...] = ()
  resize_grid: bool = False


LINEAR = (1, 0)  # torch.nn.Linear stores (out, in); Flax's Dense kernel is (in, out).


def linear(pattern: str, target: str, *, reshape: bool = False) -> list[Rule]:
  """A PyTorch Linear '<pattern>.weight' / '.bias' -> '<target>/kernel' / '/bias'."""
  return [Rule(pattern + r'\.weight', target + '/kernel', LINEAR, reshape),
          Rule(pattern + r'\.bias', target + '/bias', None, reshape)]


def layer_norm(pattern: str, target: str) -> list[Rule]:
  """A LayerNorm's weight (or gamma) and bias (or beta) -> scale and bias."""
  return [Rule(pattern + r'\.(?:weight|gamma)', target + '/scale'),
          Rule(pattern + r'\.(?:bias|beta)', target + '/bias')]


class Mapped(NamedTuple):
  source: str        # The checkpoint's tensor name.
  array: np.ndarray
  rule: Rule


def map_tensors(tensors: Mapping[str, np.ndarray], rules: Iterable[Rule], ignore: str = ''
                ) -> tuple[dict[str, Mapped], list[str]]:
  """({param path: Mapped}, names of tensors no rule took) for checkpoint `tensors`.

  The first rule whose pattern fullmatches a name applies; names that fullmatch `ignore`
  (buffers, tied copies, heads of other tasks) are dropped.
  """
  compiled = [(re.compile(rule.pattern), rule) for rule in rules]
  mapped, unused = {}, []
  for name, array in tensors.items():
    if ignore and re.fullmatch(ignore, name):
      continue
    for pattern, rule in compiled:
      match = pattern.fullmatch(name)
      if match:
        array = np.asarray(array)
        if rule.transpose is not None:
          array = np.transpose(array, rule.transpose)
        target = match.expand(rule.target)
        if rule.split:
          for part, piece in zip(rule.split, np.split(array, len(rule.split), axis=-1)):
            mapped[target.replace('{part}', part)] = Mapped(name, piece, rule)
        else:
          mapped[target] = Mapped(name, array, rule)
        break
    else:
      unused.append(name)
  return mapped, unused
