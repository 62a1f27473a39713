"""`jaxmodels quantize WORKDIR`: int8 post-training quantisation of a finished run. Writes
the int8 variables to an .npz and reports the kernels' bytes, and the test accuracy before
and after when the run's dataset is at hand."""
import os

from jaxmodels.compress import measure
from jaxmodels.compress.quantize import SCHEMES, quantize_run
from jaxmodels.runs.trained import TrainedRun


def add_arguments(parser):
  parser.add_argument('workdir', help='a finished run (its model.json and checkpoints)')
  parser.add_argument('--scheme', choices=SCHEMES, default='int8',
                      help="'int8': weights only; 'w8a8': weights and activations")
  parser.add_argument('--out', help='the .npz to write (default WORKDIR/quantized-SCHEME.npz)')
  parser.add_argument('--local_dir', help="the dataset's files, if not found automatically")


def main(args) -> int:
  run = TrainedRun.load(args.workdir)
  quantized = quantize_run(run, args.scheme)
  out = args.out or os.path.join(args.workdir, f'quantized-{args.scheme}.npz')
  size = quantized.save(out)
  kernels = quantized.weight_bytes
  print(f'{args.scheme}: kernels {kernels["float"]:,} -> {kernels["quantized"]:,} bytes '
        f'({kernels["float"] / kernels["quantized"]:.2f}x fewer); wrote {out} ({size:,} bytes)')
  split, reason = measure.test_split(run.card, args.local_dir)
  if split is None:
    print(f'no test accuracy: {reason}')
    return 0
  inputs = run.model_inputs(split[0])
  before = measure.accuracy(run.apply, inputs, split[1])
  after = measure.accuracy(quantized.apply, inputs, split[1])
  print(f'test accuracy: float32 {before:.4f}, {args.scheme} {after:.4f} '
        f'({100 * (after - before):+.2f} points)')
  return 0
