"""`jaxmodels prune-channels WORKDIR OUT`: structured channel pruning of a finished CNN run
into a new, narrower run in OUT (fine-tune it with init_from). Reports parameters, FLOPs of
the forward pass per image, and the test accuracy before and after when the data is at hand."""
import numpy as np

from jaxmodels.compress import measure
from jaxmodels.compress.channels import prune_run_channels
from jaxmodels.runs.trained import TrainedRun


def add_arguments(parser):
  parser.add_argument('workdir', help='a finished run of a CNN with batch-norm or biases')
  parser.add_argument('out', help='a new directory for the pruned run')
  parser.add_argument('--fraction', type=float, default=0.5,
                      help="share of each convolution's channels to remove")
  parser.add_argument('--local_dir', help="the dataset's files, if not found automatically")


def _describe(run) -> str:
  example = np.zeros((1, *run.card['inputs']['shape']), np.float32)
  flops = measure.forward_flops(lambda v, x: run.module.apply(v, x, train=False), run.variables,
                                example)
  params = measure.count_params(run.variables['params'])['total']
  widths = run.card['model']['arguments'].get('widths')
  return f'widths {list(widths) if widths else "default"}, {params:,} params, {flops:,.0f} FLOPs'


def main(args) -> int:
  run = TrainedRun.load(args.workdir)
  pruned = prune_run_channels(run, args.fraction)
  pruned.save(args.out)
  print(f'before: {_describe(run)}\nafter:  {_describe(pruned)}\nwrote {args.out}')
  split, reason = measure.test_split(run.card, args.local_dir)
  if split is None:
    print(f'no test accuracy: {reason}')
    return 0
  inputs = run.model_inputs(split[0])
  print(f'test accuracy: before {measure.accuracy(run.apply, inputs, split[1]):.4f}, after '
        f'{measure.accuracy(pruned.apply, inputs, split[1]):.4f} (before fine-tuning)')
  return 0
