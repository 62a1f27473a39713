"""POST /v1/feedback {"feedback": [{"prediction_id": "<a /predict id>", "label": <class name
or index>}, ...]} -> {"accepted": n}, answered only once the store has committed every item.
Nothing is written unless all are good: an unknown id answers 404, a label that is not a
class 422, a malformed body 400/422, a server without a prediction store 409."""
import asyncio

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jaxmodels.serve.prediction_store import BadLabel, UnknownPrediction

MAX_ITEMS = 10_000


def feedback_items(body, class_names: list) -> list[tuple[str, int]]:
  """(prediction_id, class index) pairs of a parsed body; ValueError saying what is wrong.
  Class names become their index; an index is checked by the store."""
  if not isinstance(body, dict) or set(body) != {'feedback'}:
    raise ValueError('the body is {"feedback": [{"prediction_id": ..., "label": ...}, ...]}')
  entries = body['feedback']
  if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ITEMS:
    raise ValueError(f'feedback is a list of 1 to {MAX_ITEMS:,} items')
  index_of = {name: i for i, name in enumerate(class_names)}
  items = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or set(entry) != {'prediction_id', 'label'}:
      raise ValueError(f'feedback.{i}: an item is {{"prediction_id": ..., "label": ...}}')
    prediction_id, label = entry['prediction_id'], entry['label']
    if not isinstance(prediction_id, str) or not prediction_id:
      raise ValueError(f'feedback.{i}.prediction_id: a prediction id is a string')
    if isinstance(label, str):
      if label not in index_of:
        raise BadLabel(label, len(class_names), f'feedback.{i}: ', names=True)
      label = index_of[label]
    elif isinstance(label, bool) or not isinstance(label, int):
      raise BadLabel(label, len(class_names), f'feedback.{i}: ', names=True)
    items.append((prediction_id, label))
  return items


def add_feedback_route(app: FastAPI, store_of, class_names_of) -> None:
  """`store_of()`: the PredictionStore or None; `class_names_of()`: the champion's classes."""
  error = lambda status, message: JSONResponse({'error': message}, status_code=status)

  @app.post('/v1/feedback')
  async def feedback(request: Request):
    store = store_of()
    if store is None:
      return error(409, 'this server records no predictions: start it with --store URL '
                        '(a repository records into REPO/monitor.db)')
    try:
      body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
      return error(400, f'the body is not valid JSON ({e})')
    class_names = class_names_of()
    try:
      items = feedback_items(body, class_names)
      accepted = await asyncio.to_thread(store.add_feedback, items, len(class_names))
    except UnknownPrediction as e:
      return error(404, str(e))
    except (BadLabel, ValueError) as e:
      return error(422, str(e))
    return {'accepted': accepted}
