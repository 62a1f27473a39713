"""`jaxmodels feedback import`'s reader: a CSV file of prediction_id,label rows into a
prediction store, all rows or none."""
import csv

from jaxmodels.errors import InputError
from jaxmodels.serve.prediction_store import BadLabel, PredictionStore, UnknownPrediction


def import_feedback_csv(store: PredictionStore, path: str, class_names) -> int:
  """Stores the feedback of a CSV file with columns prediction_id,label (a class name or an
  index; a name wins where both could match) in one transaction: all rows, or none and a
  one-line error naming the file's line. An id given twice keeps its last label. Returns the
  number of rows."""
  class_names = list(class_names)
  index_of = {name: i for i, name in enumerate(class_names)}
  items, line_of = [], {}
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    missing = {'prediction_id', 'label'} - set(reader.fieldnames or ())
    if missing:
      raise InputError(f'{path}: the header has no {", ".join(sorted(missing))} column: '
                       'write "prediction_id,label" on its first line')
    for row in reader:
      where = f'{path} line {reader.line_num}: '
      prediction_id, label = (row['prediction_id'] or '').strip(), (row['label'] or '').strip()
      if not prediction_id:
        raise UnknownPrediction(prediction_id, where)
      index = index_of.get(label)
      if index is None:
        try:
          index = int(label)
        except ValueError:
          raise BadLabel(label, len(class_names), where, names=True) from None
        if not 0 <= index < len(class_names):
          raise BadLabel(label, len(class_names), where, names=True)
      items.append((prediction_id, index))
      line_of[prediction_id] = reader.line_num
  try:
    store.add_feedback(items, len(class_names))
  except UnknownPrediction as e:
    raise UnknownPrediction(e.prediction_id, f'{path} line {line_of[e.prediction_id]}: ') from None
  return len(items)
