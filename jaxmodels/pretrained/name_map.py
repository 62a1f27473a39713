r"""Name maps as data: regex rules from a checkpoint's tensor names to jaxmodels' param paths,
each with the layout change it needs (transpose, split into parts, heads axis split in two).
`map_tensors` names each tensor's param; `checkpoint_shape` is the shape a tensor must have
for a param of a given shape, checked before `to_param` converts it.

    Rule(r'h\.(\d+)\.attn\.c_attn\.weight', r'decoder/layer\1/attention/{part}/kernel',
         heads=1, split=('query', 'key', 'value'))
"""
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np


class Rule(NamedTuple):
  """A tensor whose name fullmatches `pattern` becomes the param `target` (a template with
  the pattern's groups, \\1 ...). transpose: axes permutation applied first (a PyTorch
  Linear's (out, in) -> (in, out)). split: the last axis cut into equal parts, one per
  name, put into the template's {part} (GPT-2's fused c_attn). heads: the param axis where
  the tensor's one axis of H * D features becomes the two axes (H, D) (attention
  projections: (E, H * D) -> (E, H, D) is heads=1; (H * D,) -> (H, D) is heads=0).
  resize_grid: a position table whose patch grid is resized to the param's (ViT at
  another image size)."""
  pattern: str
  target: str
  transpose: tuple[int, ...] | None = None
  heads: int | None = None
  split: tuple[str, ...] = ()
  resize_grid: bool = False


LINEAR = (1, 0)  # torch.nn.Linear stores (out, in); Flax's Dense kernel is (in, out).


def linear(pattern: str, target: str, *, heads: str = '') -> list[Rule]:
  """A PyTorch Linear '<pattern>.weight' / '.bias' -> '<target>/kernel' / '/bias'.
  heads: 'out' for a projection into heads (kernel (E, H, D), bias (H, D)), 'in' for one
  out of them (kernel (H, D, E), bias (E,)), '' for a plain Dense."""
  kernel, bias = {'': (None, None), 'out': (1, 0), 'in': (0, None)}[heads]
  return [Rule(pattern + r'\.weight', target + '/kernel', LINEAR, kernel),
          Rule(pattern + r'\.bias', target + '/bias', None, bias)]


def layer_norm(pattern: str, target: str) -> list[Rule]:
  """A LayerNorm's weight (or gamma) and bias (or beta) -> scale and bias."""
  return [Rule(pattern + r'\.(?:weight|gamma)', target + '/scale'),
          Rule(pattern + r'\.(?:bias|beta)', target + '/bias')]


class Mapped(NamedTuple):
  source: str        # The checkpoint's tensor name.
  array: np.ndarray  # As the checkpoint holds it: `to_param` converts it.
  rule: Rule
  part: int = 0      # Which of rule.split's parts.


def checkpoint_shape(rule: Rule, shape: tuple) -> tuple:
  """The shape the checkpoint's tensor must have for a param of `shape` under `rule`: the
  rule's layout changes undone (heads merged, parts joined, transpose inverted)."""
  shape = list(shape)
  if rule.heads is not None and rule.heads + 1 < len(shape):
    shape[rule.heads:rule.heads + 2] = [shape[rule.heads] * shape[rule.heads + 1]]
  if rule.split and shape:
    shape[-1] *= len(rule.split)
  if rule.transpose is not None and len(shape) == len(rule.transpose):
    shape = [shape[axis] for axis in np.argsort(rule.transpose)]
  return tuple(shape)


def to_param(mapped: Mapped, shape: tuple) -> np.ndarray:
  """The tensor in the param's layout; its shape must be `checkpoint_shape(rule, shape)`."""
  array, rule = np.asarray(mapped.array), mapped.rule
  if rule.transpose is not None:
    array = np.transpose(array, rule.transpose)
  if rule.split:
    array = np.split(array, len(rule.split), axis=-1)[mapped.part]
  return array.reshape(shape)


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
        target = match.expand(rule.target)
        for part, part_name in enumerate(rule.split or ('',)):
          mapped[target.replace('{part}', part_name)] = Mapped(name, array, rule, part)
        break
    else:
      unused.append(name)
  return mapped, unused
