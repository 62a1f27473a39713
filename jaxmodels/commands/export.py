"""`jaxmodels export WORKDIR --out DIR`: a finished run -> an artifact that runs with jax
alone (`serve.artifact_export`); with --quantize int8, measured on the run's own test split."""
from jaxmodels.errors import DataError
from jaxmodels.runs import TrainedRun
from jaxmodels.serve.artifact_export import PLATFORMS, QUANTIZATIONS, directory_bytes, export_run
from jaxmodels.tasks.registry import load_test_split


def add_arguments(parser) -> None:
  parser.add_argument('workdir', help='the workdir of a finished run (model.json, checkpoints/)')
  parser.add_argument('--out', required=True, help='a new directory for the artifact')
  parser.add_argument('--platforms', default=','.join(PLATFORMS),
                      help='comma-separated platforms to serialise for (default: %(default)s)')
  parser.add_argument('--quantize', choices=QUANTIZATIONS, default=None,
                      help='weight-only int8 with per-channel scales; the test accuracy before '
                           'and after is measured and recorded')
  parser.add_argument('--step', type=int, default=None,
                      help="a checkpoint step (default: the run's result, model.json's step)")


def main(args) -> int:
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
  test_split = None
  if args.quantize:
    try:
      test_split = load_test_split(TrainedRun.load(args.workdir, args.step))
    except DataError as e:
      print(f'warning: the test split is not available here ({e})')
  manifest = export_run(args.workdir, args.out, platforms=platforms, quantization=args.quantize,
                        step=args.step, test_split=test_split)
  print(f'exported {manifest["run"]["task"]} ({manifest["run"]["model"]["name"]}, step '
        f'{manifest["run"]["step"]}) for {", ".join(platforms)} to {args.out} '
        f'({directory_bytes(args.out):,} bytes)')
  return 0
