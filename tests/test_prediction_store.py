"""The prediction store: records written in batches off the request path, dropped (and
counted) rather than raised when the database cannot take them; feedback checked, all or
nothing and durable once acknowledged, on SQLite and PostgreSQL. Every check reads the
database back without the store (stdlib sqlite3, psycopg)."""
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa

from jaxmodels.errors import InputError
from jaxmodels.serve.feedback_csv import import_feedback_csv
from jaxmodels.serve.prediction_store import (BadLabel, PredictionStore, UnknownPrediction,
                                               new_record)
from postgres_server import postgres_server

WORKER = pathlib.Path(__file__).with_name('feedback_worker.py')
LOGGER = 'jaxmodels.serve.prediction_store'


def make_records(n: int, *, start: int = 0, version: int = 1, created_at: float | None = None):
  """n records with distinct inputs; the even ones keep their input bytes (sampled)."""
  records = []
  for i in range(start, start + n):
    top_k = [{'label': f'class {i % 7}', 'index': i % 7, 'probability': 0.5 + i % 5 / 10},
             {'label': f'class {(i + 1) % 7}', 'index': (i + 1) % 7, 'probability': 0.125}]
    record = new_record(top_k, os.urandom(16) + bytes([i % 256]), model_version=version,
                        latency_ms=i / 4, keep_input=i % 2 == 0)
    records.append(record if created_at is None else record._replace(created_at=created_at + i))
  return records


def read(path, query: str, *args) -> list[tuple]:
  with contextlib.closing(sqlite3.connect(path)) as connection:
    return connection.execute(query, args).fetchall()


@pytest.fixture
def store(tmp_path):
  store = PredictionStore(str(tmp_path / 'store.db'))
  yield store
  store.close()


def test_records_are_committed_in_batches_and_read_back(tmp_path):
  path = tmp_path / 'store.db'
  store = PredictionStore(f'sqlite:///{path}', batch_size=64, max_wait_ms=100)
  commits = []
  sa.event.listen(store.engine, 'commit', lambda connection: commits.append(1))
  records = make_records(300)
  for start in range(0, 300, 30):  # Ten requests' worth, as fast as they come.
    store.record(records[start:start + 30])
  assert store.flush(30) and store.dropped == 0
  assert 1 <= len(commits) <= 10  # Batches of up to 64, not one transaction per record.

  rows = {row[0]: row for row in read(path, 'SELECT prediction_id, created_at, model_version, '
                                      'top_k, predicted, input_digest, latency_ms, input '
                                      'FROM predictions')}
  assert len(rows) == 300
  for i, record in enumerate(records):
    _, created_at, version, top_k, predicted, digest, latency, blob = rows[record.prediction_id]
    assert (created_at, version, predicted, latency) == (
        record.created_at, 1, i % 7, i / 4)
    assert json.loads(top_k) == record.top_k
    assert blob == (record.input if i % 2 == 0 else None)
    if blob is not None:
      assert digest == hashlib.sha256(blob).hexdigest()
    assert len(digest) == 64 and len(record.prediction_id) == 32
  assert read(path, 'PRAGMA journal_mode') == [('wal',)]
  with store.engine.connect() as connection:  # FULL: the WAL is synced at every commit.
    assert connection.exec_driver_sql('PRAGMA synchronous').scalar() == 2
  store.close()


def test_readers_filter_by_time_and_version(store):
  old, new = make_records(4, created_at=1000.0), make_records(4, start=4, version=2,
                                                              created_at=1000.0)
  store.record(old + new)
  store.flush(30)
  store.add_feedback([(old[1].prediction_id, 3), (new[2].prediction_id, 6)], num_classes=7)
  assert store.counts() == {'predictions': 8, 'feedback': 2}
  ids = lambda rows: [row['prediction_id'] for row in rows]
  assert ids(store.predictions()) == [r.prediction_id for r in old + new]  # Oldest first.
  assert ids(store.predictions(since=1002.0, version=1)) == [old[2].prediction_id,
                                                             old[3].prediction_id]
  assert ids(store.predictions(version=2, limit=2)) == [new[0].prediction_id, new[1].prediction_id]
  assert store.predictions(limit=1)[0]['top_k'] == old[0].top_k
  assert store.labelled() == [
      {'prediction_id': old[1].prediction_id, 'model_version': 1, 'predicted': 1, 'label': 3,
       'created_at': 1001.0},
      {'prediction_id': new[2].prediction_id, 'model_version': 2, 'predicted': 6, 'label': 6,
       'created_at': 1006.0}]
  assert ids(store.labelled(version=2)) == [new[2].prediction_id]
  assert store.labelled(since=1007.0) == []


def test_a_failing_database_drops_counts_and_warns_once(tmp_path, caplog):
  directory = tmp_path / 'gone'
  directory.mkdir()
  store = PredictionStore(str(directory / 'store.db'))
  shutil.rmtree(directory)
  store.engine.dispose()  # The pool's open handle would still write to the unlinked file.
  caplog.set_level(logging.WARNING, LOGGER)
  for start in (0, 10, 20):
    began = time.perf_counter()
    store.record(make_records(10, start=start))
    assert time.perf_counter() - began < 0.05
    assert store.flush(30)  # Three batches, each failing.
  assert store.dropped == 30
  warnings = [r for r in caplog.records if r.name == LOGGER]
  assert len(warnings) == 1 and 'OperationalError' in warnings[0].getMessage()
  store.close()

  working = PredictionStore(str(tmp_path / 'working.db'))  # The process goes on.
  records = make_records(2)
  working.record(records)
  assert working.add_feedback([(records[0].prediction_id, 1)], 7) == 1
  working.close()


def test_the_store_recovers_once_the_database_does(store, caplog):
  def fail(connection, cursor, statement, *args):
    if statement.startswith('INSERT INTO predictions'):
      raise sqlite3.OperationalError('disk I/O error')

  caplog.set_level(logging.WARNING, LOGGER)
  sa.event.listen(store.engine, 'before_cursor_execute', fail)
  store.record(make_records(5))
  store.flush(30)
  store.record(make_records(3, start=5))
  store.flush(30)
  assert store.dropped == 8 and len([r for r in caplog.records if r.name == LOGGER]) == 1
  sa.event.remove(store.engine, 'before_cursor_execute', fail)
  records = make_records(4, start=8)
  store.record(records)
  assert store.add_feedback([(r.prediction_id, 2) for r in records], 7) == 4
  assert store.dropped == 8 and store.counts() == {'predictions': 4, 'feedback': 4}


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path, caplog):
  path = tmp_path / 'store.db'
  store = PredictionStore(str(path), queue_size=3, max_wait_ms=10)
  caplog.set_level(logging.WARNING, LOGGER)
  locker = sqlite3.connect(path, isolation_level=None)
  locker.execute('BEGIN IMMEDIATE')  # Another writer holds the database: the writer waits.
  store.record(make_records(1))
  time.sleep(0.3)  # Far past max_wait_ms: the writer took it and waits for the lock.
  began = time.perf_counter()
  store.record(make_records(10, start=1))
  assert time.perf_counter() - began < 0.05
  assert store.dropped == 7  # 3 fit in the queue.
  warnings = [r for r in caplog.records if r.name == LOGGER]
  assert len(warnings) == 1 and 'full' in warnings[0].getMessage()
  locker.execute('COMMIT')
  locker.close()
  assert store.flush(30)
  assert read(path, 'SELECT COUNT(*) FROM predictions') == [(4,)]
  store.close()


def test_unknown_ids_and_bad_labels_write_nothing(store):
  path = store.engine.url.database
  records = make_records(3)
  store.record(records)
  store.flush(30)
  ids = [r.prediction_id for r in records]
  with pytest.raises(UnknownPrediction, match="'missing'") as caught:
    store.add_feedback([(ids[0], 1), ('missing', 2), (ids[1], 3)], num_classes=7)
  assert caught.value.prediction_id == 'missing' and isinstance(caught.value, InputError)
  for label in (7, -1, True, 1.0, '2'):
    with pytest.raises(BadLabel, match=r'0\.\.6'):
      store.add_feedback([(ids[0], 1), (ids[1], label)], num_classes=7)
  assert read(path, 'SELECT COUNT(*) FROM feedback') == [(0,)]


def test_feedback_sent_again_replaces_the_label(store):
  path = store.engine.url.database
  records = make_records(2)
  store.record(records)
  a, b = (r.prediction_id for r in records)
  store.add_feedback([(a, 1)], num_classes=7)
  store.add_feedback([(a, 4), (b, 2), (b, 5)], num_classes=7)
  assert sorted(read(path, 'SELECT prediction_id, label FROM feedback')) == sorted(
      [(a, 4), (b, 5)])


def test_feedback_right_after_record_finds_the_queued_prediction(tmp_path):
  path = tmp_path / 'store.db'
  store = PredictionStore(str(path), max_wait_ms=2000)  # The writer is still gathering.
  records = make_records(3)
  store.record(records)
  assert read(path, 'SELECT COUNT(*) FROM predictions') == [(0,)]
  began = time.perf_counter()
  assert store.add_feedback([(records[2].prediction_id, 6)], num_classes=7) == 1
  assert time.perf_counter() - began < 1.5  # It asked the writer to commit now.
  assert read(path, 'SELECT prediction_id, label FROM feedback') == [(records[2].prediction_id, 6)]
  store.close()


def test_stores_opened_at_once_on_a_new_file_share_its_tables(tmp_path):
  path, stores, errors = str(tmp_path / 'store.db'), [], []
  barrier = threading.Barrier(4)

  def open_store():
    barrier.wait()
    try:
      stores.append(PredictionStore(path))
    except Exception as e:  # noqa: BLE001 - reported below.
      errors.append(e)

  threads = [threading.Thread(target=open_store) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  for i, store in enumerate(stores):
    store.record(make_records(2, start=2 * i))
    store.close()
  assert read(path, 'SELECT COUNT(*) FROM predictions') == [(8,)]


def test_import_feedback_csv(store, tmp_path):
  path = store.engine.url.database
  records = make_records(3)
  store.record(records)
  a, b, c = (r.prediction_id for r in records)
  names = ['cat', 'dog', 'bird']
  good = tmp_path / 'good.csv'
  good.write_text(f'prediction_id,label\n{a},dog\n{b},2\n{c},cat\n')
  assert import_feedback_csv(store, str(good), names) == 3
  assert sorted(read(path, 'SELECT prediction_id, label FROM feedback')) == sorted(
      [(a, 1), (b, 2), (c, 0)])

  for text, error, where in ((f'prediction_id,label\n{a},bird\n{b},zebra\n', BadLabel, 'line 3'),
                             (f'prediction_id,label\n{a},bird\n{b},3\n', BadLabel, 'line 3'),
                             (f'prediction_id,label\n{a},bird\nnope,cat\n', UnknownPrediction,
                              'line 3'),
                             (f'id,label\n{a},bird\n', InputError, 'prediction_id')):
    bad = tmp_path / 'bad.csv'
    bad.write_text(text)
    with pytest.raises(error, match=where) as caught:
      import_feedback_csv(store, str(bad), names)
    assert '\n' not in str(caught.value)
  assert sorted(read(path, 'SELECT prediction_id, label FROM feedback')) == sorted(
      [(a, 1), (b, 2), (c, 0)])  # All or nothing: the bird of line 2 was not stored.


def test_acknowledged_feedback_survives_sigkill(tmp_path):
  path = tmp_path / 'store.db'
  worker = subprocess.Popen([sys.executable, str(WORKER), 'burst', str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  acknowledged = {}
  try:
    for line in worker.stdout:  # Each line is printed after add_feedback returned.
      acknowledged.update(item.split(':') for item in line.split())
      if len(acknowledged) >= 150:
        break
  finally:
    worker.send_signal(signal.SIGKILL)  # Mid-burst: between or inside transactions.
    _, stderr = worker.communicate(timeout=30)
  assert len(acknowledged) >= 150, stderr[-2000:]

  assert read(path, 'PRAGMA integrity_check') == [('ok',)]
  stored = dict(read(path, 'SELECT prediction_id, label FROM feedback'))
  assert {i: stored.get(i) for i in acknowledged} == {
      i: int(label) for i, label in acknowledged.items()}
  assert len(stored) - len(acknowledged) <= 5  # At most one batch committed, not yet printed.
  with_prediction = read(path, 'SELECT COUNT(*) FROM feedback JOIN predictions USING '
                         '(prediction_id)')
  assert with_prediction == [(len(stored),)]


@pytest.mark.slow
def test_two_processes_share_a_postgresql_store():
  with postgres_server() as url:
    start = str(time.time() + 8)  # Both create the tables at the same moment.
    recorder = subprocess.Popen([sys.executable, str(WORKER), 'record', url, '40', start],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    labeller = subprocess.Popen([sys.executable, str(WORKER), 'feedback', url, start],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
      ids, recorder_errors = recorder.communicate(timeout=120)
      assert recorder.returncode == 0, recorder_errors[-2000:]
      assert labeller.stdout.readline() == 'ready\n', labeller.stderr.read()[-2000:]
      out, labeller_errors = labeller.communicate(ids, timeout=120)
    finally:
      for process in (recorder, labeller):
        process.kill()
        process.wait()
    assert labeller.returncode == 0, labeller_errors[-2000:]
    ids = ids.split()
    lines = out.splitlines()
    assert lines[0] == 'accepted 40'
    assert lines[1].startswith('rejected UnknownPrediction') and '0' * 32 in lines[1]
    assert lines[2].startswith('rejected BadLabel')

    database = sa.engine.make_url(url)
    with psycopg.connect(host=database.query['host'], port=database.query['port'],
                         user='postgres', dbname='db') as connection:
      stored = dict(connection.execute('SELECT prediction_id, label FROM feedback').fetchall())
      count = connection.execute('SELECT COUNT(*) FROM predictions').fetchone()[0]
    assert count == 40
    assert stored == {i: n % 10 for n, i in enumerate(ids)}  # The rejected calls wrote nothing.
