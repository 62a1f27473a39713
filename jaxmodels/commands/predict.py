"""`jaxmodels predict DIR INPUTS...`: an exported model's top-k labels for image files
(PNG/JPEG), .npy arrays or text lines, printed as a table or, with --json, as the same
records the server's /predict returns."""
import json
import sys

from jaxmodels.errors import InputError
from jaxmodels.serve import artifact
from jaxmodels.serve.inputs import InputReader
from jaxmodels.serve.exported_model import load_exported, predictions


def add_arguments(parser) -> None:
  parser.add_argument('directory', help='an exported model (`export --out DIR`)')
  parser.add_argument('inputs', nargs='+',
                      help='image files, .npy arrays (one example or a batch), text files (one '
                           "example a line) or texts; '-' reads lines from stdin")
  parser.add_argument('--top-k', type=int, default=artifact.DEFAULT_TOP_K,
                      help='how many labels to print per input (default: %(default)s)')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object {"predictions": [{"input", "top_k"}, ...]}')


def main(args) -> int:
  if args.top_k < 1:
    raise InputError(f'top_k must be at least 1, got {args.top_k}', key='top_k')
  model = load_exported(args.directory)
  names, examples = InputReader(model.manifest).files(args.inputs, stdin=sys.stdin)
  rows = predictions(model, examples, args.top_k)
  if args.json:
    print(json.dumps({'predictions': [{'input': name, 'top_k': row}
                                      for name, row in zip(names, rows)]}))
    return 0
  for name, row in zip(names, rows):
    print(name)
    for entry in row:
      print(f'  {entry["probability"]:8.4f}  {entry["label"]}')
  return 0
