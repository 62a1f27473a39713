"""A process that uses a PredictionStore, for test_prediction_store.py.

  python feedback_worker.py burst URL             record 5 predictions, send their feedback,
                                                  print "id:label ..." once acknowledged; repeat
  python feedback_worker.py record URL N START    open the store at unix time START, record N
                                                  predictions, flush, print their ids
  python feedback_worker.py feedback URL START    open the store at START, print "ready", read
                                                  ids from stdin, send feedback for them, then
                                                  an unknown id and a bad label; print each outcome
"""
import itertools
import sys
import time

from jaxmodels.serve.prediction_store import (BadLabel, PredictionStore, UnknownPrediction,
                                               new_record)

NUM_CLASSES = 10


def record(i: int):
  top_k = [{'label': str(i % NUM_CLASSES), 'index': i % NUM_CLASSES, 'probability': 0.75}]
  return new_record(top_k, f'example {i}'.encode(), model_version=1, latency_ms=1.5)


def open_store_at(url: str, start: str) -> PredictionStore:
  time.sleep(max(0.0, float(start) - time.time()))  # Every process opens it at once.
  return PredictionStore(url)


mode, url = sys.argv[1], sys.argv[2]
if mode == 'burst':
  store = PredictionStore(url)
  counter = itertools.count()
  while True:
    records = [record(next(counter)) for _ in range(5)]
    store.record(records)  # No flush: the feedback follows at once, as a client's would.
    items = [(r.prediction_id, int(r.input_digest, 16) % NUM_CLASSES) for r in records]
    store.add_feedback(items, NUM_CLASSES)
    print(' '.join(f'{i}:{label}' for i, label in items), flush=True)
elif mode == 'record':
  store = open_store_at(url, sys.argv[4])
  records = [record(i) for i in range(int(sys.argv[3]))]
  store.record(records)
  assert store.flush(60) and store.dropped == 0
  print(' '.join(r.prediction_id for r in records), flush=True)
  store.close()
else:
  store = open_store_at(url, sys.argv[3])
  print('ready', flush=True)
  ids = sys.stdin.readline().split()
  print('accepted', store.add_feedback([(i, n % NUM_CLASSES) for n, i in enumerate(ids)],
                                       NUM_CLASSES), flush=True)
  for items in ([(ids[0], 1), ('0' * 32, 2)], [(ids[0], NUM_CLASSES)]):
    try:
      store.add_feedback(items, NUM_CLASSES)
      print('accepted', len(items), flush=True)
    except (UnknownPrediction, BadLabel) as e:
      print('rejected', type(e).__name__, e, flush=True)
  store.close()
