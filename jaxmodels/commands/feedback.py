"""`jaxmodels feedback import REPO FILE.csv [--store URL]`: labels for served predictions,
from a CSV file with the columns prediction_id,label (a class name or index), into the
prediction store; all rows or none."""
import os

from jaxmodels.serve.model_repository import STORE_FILE, ModelRepository
from jaxmodels.serve.feedback_csv import import_feedback_csv
from jaxmodels.serve.prediction_store import PredictionStore


def add_arguments(parser) -> None:
  actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
  sub = actions.add_parser('import', help='labels from a CSV file (prediction_id,label)')
  sub.add_argument('repo', help='the model repository the server serves')
  sub.add_argument('file', help='a CSV file with the header prediction_id,label')
  sub.add_argument('--store', default=None,
                   help="the server's --store (default: REPO/monitor.db)")


def main(args) -> int:
  repo = ModelRepository(args.repo)
  class_names = repo.manifest(repo.state().champion).get('class_names')
  store = PredictionStore(args.store or os.path.join(args.repo, STORE_FILE))
  try:
    count = import_feedback_csv(store, args.file, class_names)
    counts = store.counts()
  finally:
    store.close()
  print(f'imported {count} feedback labels from {args.file}; the store holds '
        f'{counts["feedback"]} labels for {counts["predictions"]} predictions')
  return 0
