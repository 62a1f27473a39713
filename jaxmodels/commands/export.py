"""`jaxmodels export WORKDIR --out DIR | --repo REPO`: a finished run -> an artifact that runs
with jax alone (`serve.artifact_export`), in a new directory or as the next version of a model
repository; with --quantize int8, measured on the run's own test split. A language model (a
GPT run, or 'hf:DIR' of a GPT-2) becomes a decode-server artifact (`serve.lm_export`) with
--slots decode slots."""
import os

from jaxmodels.errors import DataError
from jaxmodels.runs import TrainedRun
from jaxmodels.serve import lm_export, model_repository
from jaxmodels.serve.artifact_export import (PLATFORMS, QUANTIZATIONS, directory_bytes,
                                             export_run, export_version)
from jaxmodels.tasks.registry import load_reference_split, load_test_split


def add_arguments(parser) -> None:
  parser.add_argument('workdir', help="the workdir of a finished run (model.json, checkpoints/), "
                                      "or 'hf:DIR', a GPT-2 Hugging Face directory")
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument('--out', help='a new directory for the artifact')
  where.add_argument('--repo', help='a model repository (created if absent): the artifact '
                                    'becomes its next version, REPO/<n>, n never used in it '
                                    'before')
  parser.add_argument('--platforms', default=','.join(PLATFORMS),
                      help='comma-separated platforms to serialise for (default: %(default)s)')
  parser.add_argument('--quantize', choices=QUANTIZATIONS, default=None,
                      help='weight-only int8 with per-channel scales; the test accuracy before '
                           'and after is measured and recorded')
  parser.add_argument('--step', type=int, default=None,
                      help="a checkpoint step (default: the run's result, model.json's step)")
  parser.add_argument('--slots', type=int, default=lm_export.DEFAULT_SLOTS,
                      help='language models: the decode slots (requests decoded at once) '
                           '(default: %(default)s)')


def main(args) -> int:
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
  if lm_export.is_language_model(args.workdir):
    return _export_language_model(args, platforms)
  test_split = reference_split = None
  run = TrainedRun.load(args.workdir, args.step)
  try:
    reference_split = load_reference_split(run)
    if args.quantize:
      test_split = load_test_split(run)
  except DataError as e:
    print(f'warning: the data of the run is not available here ({e})')
  options = dict(platforms=platforms, quantization=args.quantize, step=args.step,
                 test_split=test_split, reference_split=reference_split)
  if args.repo:
    version, manifest = export_version(args.workdir, args.repo, **options)
    out = os.path.join(args.repo, str(version))
  else:
    manifest, out = export_run(args.workdir, args.out, **options), args.out
  print(f'exported {manifest["run"]["task"]} ({manifest["run"]["model"]["name"]}, step '
        f'{manifest["run"]["step"]}) for {", ".join(platforms)} to {out} '
        f'({directory_bytes(out):,} bytes)')
  return 0


def _export_language_model(args, platforms) -> int:
  if args.quantize:
    print('warning: --quantize is for classifiers; the language model is exported in float')
  export = lambda out: lm_export.export_lm(args.workdir, out, slots=args.slots,
                                           platforms=platforms, step=args.step)
  if args.repo:
    manifests = []
    version = model_repository.ModelRepository(args.repo).add_version(
        lambda directory: manifests.append(export(directory)))
    manifest, out = manifests[0], os.path.join(args.repo, str(version))
  else:
    manifest, out = export(args.out), args.out
  run = manifest['run']
  step = '' if run['step'] is None else f'step {run["step"]}; '
  print(f'exported the language model {run["workdir"] or run["init_from"]} ({step}'
        f'{manifest["slots"]} slots, max_length {manifest["max_length"]}, '
        f'prefill buckets {", ".join(map(str, manifest["prefill_buckets"]))}; tokenizer '
        f'{manifest["tokenizer"]["kind"]}) for {", ".join(platforms)} to {out} '
        f'({directory_bytes(out):,} bytes)')
  return 0
