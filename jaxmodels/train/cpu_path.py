"""The CPU speed path: every choice jaxmodels makes because XLA:CPU runs a program its own
way, in one module. The train step, `fit` and its dispatch stay device-free; they take the
decisions made here as plain arguments.

On XLA:CPU (the figures are the SmallCNN's on a 2-core CPU, `benchmarks/README.md`):
- the model's jaxpr is rewritten (`models.fast_path.rewrite_for_cpu`): max-pool gradients
  without select-and-scatter (5-20x slower there), few-input first convolutions as fused
  multiply-adds, and the two together as `layers.conv_pool`, whose backward takes the
  pool's maximum from the forward pass, since XLA:CPU recomputes a convolution bit for bit,
  widening or tall dense layers as `layers.dense_product` (their gradients from transposed
  copies, as XLA:CPU's matrix library takes them, up to 2x faster), unmasked float32 or
  bf16 attention as `layers.attention` (causal blocks that skip the later keys), and bf16
  products with float32 results, rounded after (`models.bf16_compute`: XLA:CPU's library
  runs bf16 on the CPU's bf16 instructions only so, 2x float32's speed);
- on one CPU device a batch over 128 of a model without batch statistics is accumulated
  over slices of 128 or 64, which stay in the caches (7,200 img/s at batch 256 in one
  piece, 12,000 in two slices);
- scans (micro-batches, steps per dispatch) are unrolled: XLA:CPU runs convolution
  gradients several times slower inside a while loop;
- on one CPU device single steps read their batch from host rows, one step per dispatch;
- initial params are drawn with the classic threefry.

`fit` applies all of it; the task runner calls `tuned` itself before
`parallel.per_device_step`, after which the step cannot be seen into.
"""
import dataclasses
from collections.abc import Callable

import jax
from jax.sharding import Mesh

from jaxmodels import parallel
from jaxmodels.models.fast_path import rewrite_for_cpu

CPU_SLICES = (128, 64)  # Slice sizes where a CPU's caches still hold a CNN's activations.


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


@dataclasses.dataclass(frozen=True)
class Execution:
  """How train steps run on a mesh's devices; the defaults are every backend's but XLA:CPU's.

  rewrite_forward: the model's apply goes through `rewrite_for_cpu` (conv_pool's backward
    reuses the forward maximum).
  slice_sizes: the micro-batch sizes a step may split a batch into (`TrainStep.slice_sizes`).
  unroll: scans over micro-batches and over the steps of one dispatch run as straight-line
    code.
  host_fed_single_steps: a single step per dispatch reads its batch as numpy rows rather
    than gathering it inside the program.
  """
  rewrite_forward: bool = False
  slice_sizes: tuple[int, ...] = ()
  unroll: bool = False
  host_fed_single_steps: bool = False


def execution(mesh: Mesh | None = None) -> Execution:
  """The `Execution` for steps on `mesh` (default: one device) on this process's backend."""
  if not _on_cpu():
    return Execution()
  mesh = mesh or parallel.single_device_mesh()
  one_device = mesh.size == 1 and jax.process_count() == 1
  return Execution(
      rewrite_forward=True,
      # A process with one CPU device, where the slices were measured.
      slice_sizes=CPU_SLICES if jax.device_count() == 1 else (),
      unroll=True,
      # Host memory is that device's; XLA:CPU fuses an in-program gather (or dynamic slice)
      # into every loop that reads the batch: the SmallCNN ran 8% slower in `fit` with it.
      host_fed_single_steps=one_device)


def tuned(train_step: Callable, mesh: Mesh | None = None) -> Callable:
  """`train_step` with `execution(mesh)`'s choices: a step from `make_train_step` (a
  `TrainStep`), or one wrapped by `with_preprocess` or `skip_nonfinite`, is rebuilt with the
  rewritten apply, the slice sizes (unless it has its own or runs per device) and unrolled
  scans; any other callable is returned as it is, and so is a step already tuned (tuned
  twice is tuned once). The numbers are those of the untuned step: bit for bit but for the
  rewritten convolutions (float rounding), and the slices (the same update, summed in
  slices)."""
  return _rebuilt(train_step, execution(mesh))


def _rebuilt(step, plan: Execution):
  fields = {f.name for f in dataclasses.fields(step)} if dataclasses.is_dataclass(step) else ()
  if 'train_step' in fields:  # with_preprocess, skip_nonfinite: tune the step inside.
    inner = _rebuilt(step.train_step, plan)
    return step if inner is step.train_step else dataclasses.replace(step, train_step=inner)
  if 'apply_fn' not in fields:
    return step
  changes = {}
  if plan.rewrite_forward and not getattr(step.apply_fn, 'rewritten_for_cpu', False):
    changes['apply_fn'] = rewrite_for_cpu(step.apply_fn, recomputes_exactly=True)
  if plan.slice_sizes and not step.slice_sizes and step.axis_name is None:
    changes['slice_sizes'] = plan.slice_sizes
  if plan.unroll and not step.unroll:
    changes['unroll'] = True
  return dataclasses.replace(step, **changes) if changes else step


def auto_steps_per_dispatch(batch_size: int, mesh: Mesh) -> int:
  """4 steps per call (the host's dispatch cost is paid once for several short steps), but 1
  on one CPU device, or on CPU past 128 examples per device. There the host dispatches ahead
  of the device anyway, and XLA:CPU compiles k unrolled steps in k times the time: 2.3 s
  against 0.8 s for the SmallCNN, the same images/s after it."""
  per_device = batch_size // max(mesh.size, 1)
  return 1 if _on_cpu() and (mesh.size == 1 or per_device > 128) else 4


def partitionable_threefry_at_init() -> bool:
  """Whether `create_train_state` draws the initial params with the partitionable threefry,
  which lets sharded params be drawn shard by shard: everywhere but XLA:CPU, which compiles
  it for small rank-3/4 draws (conv and attention kernels) for seconds each."""
  return not _on_cpu()
