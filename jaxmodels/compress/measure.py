"""What compression buys, measured: bytes on disk, parameters (and non-zeros), test accuracy,
CPU latency per image and the FLOPs of the compiled forward pass (XLA's cost analysis)."""
import io
import statistics
import time
import zipfile
from collections.abc import Callable

import jax
import numpy as np

from jaxmodels import report


def flat_arrays(variables) -> dict[str, np.ndarray]:
  """{'params/Conv_0/kernel/array/qvalue': array, ...}: every leaf, int8 values included."""
  return {jax.tree_util.keystr(path, simple=True, separator='/'): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}


def save_arrays(path: str, variables, *, compressed: bool = False) -> int:
  """Writes every leaf to an .npz file (deflated if `compressed`); returns its size in bytes."""
  (np.savez_compressed if compressed else np.savez)(path, **flat_arrays(variables))
  with open(path, 'rb') as f:
    return len(f.read())


def compressed_bytes(variables) -> int:
  """Bytes of the variables as a deflated .npz, without writing it (zeros compress)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name, array in flat_arrays(variables).items():
      archive.writestr(name, array.tobytes())
  return buffer.tell()


def count_params(params) -> dict:
  """{'total', 'nonzero'}: parameters (an int8 kernel counts its values, not its scales)."""
  leaves = [leaf for name, leaf in flat_arrays(params).items() if not name.endswith('/scale')]
  return {'total': int(sum(x.size for x in leaves)),
          'nonzero': int(sum(np.count_nonzero(x) for x in leaves))}


def accuracy(predict: Callable, inputs, labels, batch_size: int = 1000) -> float:
  """Share of argmax(predict(inputs)) == labels, over batches of `batch_size`."""
  correct = 0
  for start in range(0, len(inputs), batch_size):
    logits = np.asarray(predict(inputs[start:start + batch_size]))
    correct += int(np.sum(logits.argmax(-1) == labels[start:start + batch_size]))
  return correct / len(inputs)


def latency(predict: Callable, inputs, *, repeats: int = 50) -> float:
  """Median seconds of one call of `predict(inputs)` (jitted beforehand, compile excluded)."""
  jax.block_until_ready(predict(inputs))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(predict(inputs))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def forward_flops(apply: Callable, variables, inputs) -> float | None:
  """FLOPs of one compiled `apply(variables, inputs)`, from XLA's cost analysis."""
  return report.compiled_flops(jax.jit(apply).lower(variables, inputs).compile())


def test_split(card: dict, local_dir: str | None = None):
  """(images uint8 (N, H, W, C), labels (N,)) of the test split of a run's dataset (its
  model.json), and "", or (None, the reason) when it cannot be had here."""
  from jaxmodels import data as data_lib
  try:
    dataset = data_lib.load_dataset(card['dataset'], local_dir=local_dir)
  except data_lib.DataError as e:
    return None, str(e).splitlines()[0]
  if list(dataset.test_images.shape[1:]) != list(card['inputs'].get('shape', [])):
    return None, f'its {card["dataset"]} images are not shaped as the model\'s inputs'
  return (dataset.test_images, dataset.test_labels), ''
