"""The store of served predictions and the feedback labels sent back for them, on SQLite or
PostgreSQL (SQLAlchemy Core).

`record(records)` only queues: a writer thread commits the queue in batches, off the request
path. A full queue or a failing database drops records (counted in `dropped`, logged once per
kind) and never raises into the caller. `add_feedback(items, num_classes)` is the opposite:
synchronous, durable when it returns, all or nothing in one transaction.

  predictions  prediction_id (uuid4 hex), created_at (unix s), model_version, top_k (JSON),
               predicted (class index), input_digest (sha256 hex), latency_ms, input (bytes
               of a sampled fraction, else NULL), confidence (the top probability), summary
               (JSON: the input's drift summary, `drift.Reference.summarize`, or NULL)
  feedback     prediction_id -> predictions, label (class index), received_at (unix s)
"""
import contextlib
import hashlib
import json
import logging
import numbers
import os
import queue
import sqlite3
import threading
import time
import typing
import uuid

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from jaxmodels.errors import InputError, UserError, one_line

log = logging.getLogger(__name__)

metadata = sa.MetaData()
predictions_table = sa.Table(
    'predictions', metadata,
    sa.Column('prediction_id', sa.Text, primary_key=True),
    sa.Column('created_at', sa.Double, nullable=False),
    sa.Column('model_version', sa.Integer, nullable=False),
    sa.Column('top_k', sa.Text, nullable=False),
    sa.Column('predicted', sa.Integer, nullable=False),
    sa.Column('input_digest', sa.Text, nullable=False),
    sa.Column('latency_ms', sa.Double, nullable=False),
    sa.Column('input', sa.LargeBinary, nullable=True),
    sa.Column('confidence', sa.Double, nullable=True),
    sa.Column('summary', sa.Text, nullable=True),
    sa.Index('predictions_created_at', 'created_at'),
    sa.Index('predictions_model_version', 'model_version'))
feedback_table = sa.Table(
    'feedback', metadata,
    sa.Column('prediction_id', sa.Text, sa.ForeignKey('predictions.prediction_id'),
              primary_key=True),
    sa.Column('label', sa.Integer, nullable=False),
    sa.Column('received_at', sa.Double, nullable=False))

# Serialises create_all across processes on PostgreSQL (any fixed key: 'jmps').
_SCHEMA_LOCK = 0x6A6D7073
_IN_CHUNK = 500  # ids per IN (...) lookup: far below SQLite's bound-variable limit.
_FEEDBACK_FLUSH_TIMEOUT_S = 10.0


class UnknownPrediction(InputError):  # noqa: N818 - named for what the client sent (HTTP 404).
  """Feedback for a prediction id the store has not recorded."""

  def __init__(self, prediction_id, where: str = ''):
    super().__init__(f'{where}unknown prediction id {prediction_id!r}: send the id a '
                     '/predict response gave')
    self.prediction_id = prediction_id


class BadLabel(InputError):  # noqa: N818 - named for what the client sent (HTTP 422).
  """A feedback label that is not a class index in 0..num_classes-1 (nor, from a file, a
  class name)."""

  def __init__(self, label, num_classes: int, where: str = '', names: bool = False):
    super().__init__(f'{where}label {label!r} is not a class: give '
                     + ('a class name or ' if names else '') + f'an index in 0..{num_classes - 1}')
    self.label = label


class PredictionRecord(typing.NamedTuple):
  """One served prediction, as stored. `top_k`: the /predict records of the example
  ({'label', 'index', 'probability'}, best first); `input`: its bytes, or None when this
  example was not sampled; `confidence`: the top probability; `summary`: the input's drift
  summary (k floats) or None."""
  prediction_id: str
  created_at: float
  model_version: int
  top_k: list
  predicted: int
  input_digest: str
  latency_ms: float
  input: bytes | None = None
  confidence: float | None = None
  summary: list | None = None


def new_record(top_k: list, input_bytes: bytes, *, model_version: int, latency_ms: float,
               keep_input: bool = False, summary=None) -> PredictionRecord:
  """The record of one prediction made now: a fresh uuid4 id, the sha256 of the input bytes
  (which are kept only with `keep_input`, for the sampled fraction), the top probability and
  the input's drift `summary` (a sequence of floats) when there is one."""
  return PredictionRecord(uuid.uuid4().hex, time.time(), int(model_version), top_k,
                          int(top_k[0]['index']), hashlib.sha256(input_bytes).hexdigest(),
                          float(latency_ms), bytes(input_bytes) if keep_input else None,
                          float(top_k[0]['probability']),
                          None if summary is None else [float(x) for x in summary])


_BUSY_TIMEOUT_S = 30.0  # How long a SQLite connection waits for another's write lock.


def engine_for(url: str) -> sa.engine.Engine:
  """An engine for a SQLAlchemy URL or a plain file path (SQLite). SQLite connections run in
  WAL mode with synchronous=FULL, so a commit that returned survives a crash, and every
  transaction is BEGIN IMMEDIATE: it holds the write lock from its start, so a read that
  leads to a write never fails to upgrade. PostgreSQL goes through psycopg 3."""
  if '://' not in url:
    url = 'sqlite:///' + os.path.abspath(url)
  parsed = sa.engine.make_url(url)
  if parsed.drivername == 'postgresql':
    parsed = parsed.set(drivername='postgresql+psycopg')
  if parsed.get_backend_name() != 'sqlite':
    return sa.create_engine(parsed, pool_pre_ping=True)
  if parsed.database in (None, '', ':memory:'):
    raise UserError(f'{url}: an in-memory SQLite database is not shared between threads; '
                    'give a file path')
  engine = sa.create_engine(parsed, connect_args={'timeout': _BUSY_TIMEOUT_S})

  @sa.event.listens_for(engine, 'connect')
  def _on_connect(connection, record):
    connection.isolation_level = None  # pysqlite's own BEGIN handling off: ours below.
    _switch_to_wal(connection)
    for pragma in ('synchronous=FULL', 'foreign_keys=ON'):
      connection.execute(f'PRAGMA {pragma}').close()

  @sa.event.listens_for(engine, 'begin')
  def _on_begin(connection):
    connection.exec_driver_sql('BEGIN IMMEDIATE')

  return engine


def _switch_to_wal(connection) -> None:
  """PRAGMA journal_mode=WAL, retried while the file is locked. Switching a new file's mode
  upgrades a read lock, and SQLite answers a busy upgrade at once instead of waiting out the
  busy timeout (it could deadlock), so stores opened together on a new file would fail."""
  deadline = time.monotonic() + _BUSY_TIMEOUT_S
  while True:
    try:
      connection.execute('PRAGMA journal_mode=WAL').close()
      return
    except sqlite3.OperationalError as e:
      if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
        raise
      time.sleep(0.01)


class PredictionStore:
  """Predictions and feedback in the database at `url` (see `engine_for`); the tables are
  made when missing. `queue_size` bounds the records waiting to be written; the writer
  commits up to `batch_size` at a time, waiting at most `max_wait_ms` after the first."""

  def __init__(self, url: str, *, queue_size: int = 10_000, batch_size: int = 500,
               max_wait_ms: float = 50.0):
    self.engine = engine_for(url)
    self.batch_size, self.max_wait = batch_size, max_wait_ms / 1000
    self._create_tables()
    self._queue: queue.Queue = queue.Queue(queue_size)
    self._lock = threading.Lock()
    self._dropped, self._warned, self._closed = 0, set(), False
    self._writer = threading.Thread(target=self._write_loop, name='prediction-store',
                                    daemon=True)
    self._writer.start()

  def _create_tables(self) -> None:
    # Two processes starting at once would both see no table and both create it: the
    # check and the creation run under one lock (SQLite: the BEGIN IMMEDIATE write lock).
    with self.engine.begin() as connection:
      if self.engine.dialect.name == 'postgresql':
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
      metadata.create_all(connection)
      # A store made before the monitor's columns existed gains them (NULL for old rows).
      present = {c['name'] for c in sa.inspect(connection).get_columns('predictions')}
      for column in ('confidence', 'summary'):
        if column not in present:
          kind = predictions_table.c[column].type.compile(dialect=connection.dialect)
          connection.exec_driver_sql(f'ALTER TABLE predictions ADD COLUMN {column} {kind}')

  @property
  def dropped(self) -> int:
    """Records dropped so far: queue full, database failing, or store closed."""
    with self._lock:
      return self._dropped

  def record(self, records) -> None:
    """Queues PredictionRecords for the writer and returns at once; never raises."""
    records = list(records)
    if self._closed:
      self._drop(len(records), 'closed', 'the store is closed')
      return
    for i, record in enumerate(records):
      try:
        self._queue.put_nowait(record)
      except queue.Full:
        self._drop(len(records) - i, 'full', f'the write queue is full '
                   f'({self._queue.maxsize} records): the database is slower than the traffic')
        return

  def flush(self, timeout: float | None = None) -> bool:
    """Waits until every record queued so far is committed (or dropped); False on timeout."""
    if self._closed:
      return self._queue.unfinished_tasks == 0
    done = threading.Event()
    try:
      self._queue.put(done, timeout=timeout)
    except queue.Full:
      return False
    return done.wait(timeout)

  def close(self, timeout: float | None = 30.0) -> None:
    """Writes what is queued, then stops the writer and closes the connections."""
    if self._closed:
      return
    self.flush(timeout)
    self._closed = True
    with contextlib.suppress(queue.Full):  # Full: the writer is stuck; it is a daemon.
      self._queue.put(None, timeout=timeout)
    self._writer.join(timeout)
    late = 0  # Records put while it stopped.
    with contextlib.suppress(queue.Empty):
      while True:
        late += not isinstance(self._queue.get_nowait(), (threading.Event, type(None)))
    if late:
      self._drop(late, 'closed', 'the store is closed')
    self.engine.dispose()

  def _drop(self, count: int, kind: str, why: str) -> None:
    with self._lock:
      self._dropped += count
      first = kind not in self._warned
      self._warned.add(kind)
    if first:  # Once per kind: a failing database would otherwise log every batch.
      log.warning('prediction records dropped (%s); counted in PredictionStore.dropped, '
                  'further drops of this kind are not logged', why)

  def _write_loop(self) -> None:
    while True:
      item = self._queue.get()
      batch, waiters, stop = [], [], item is None
      deadline = time.monotonic() + self.max_wait
      while not stop:
        if isinstance(item, threading.Event):
          waiters.append(item)
          break  # A flush is waiting: commit what there is now.
        batch.append(item)
        if len(batch) >= self.batch_size:
          break
        try:
          item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        stop = item is None
      if batch:
        self._write(batch)
      for _ in range(len(batch) + len(waiters) + stop):
        self._queue.task_done()
      for waiter in waiters:
        waiter.set()
      if stop:
        return

  def _write(self, batch: list) -> None:
    try:
      rows = [{**record._asdict(), 'top_k': json.dumps(record.top_k, default=_plain),
               'summary': None if record.summary is None else json.dumps(record.summary)}
              for record in batch]
      with self.engine.begin() as connection:
        connection.execute(predictions_table.insert(), rows)
    except Exception as e:  # Whatever it is, the requests were answered: drop, go on.
      self._drop(len(batch), type(e).__name__, f'{type(e).__name__}: {one_line(e)}')

  def add_feedback(self, items, num_classes: int) -> int:
    """Stores (prediction_id, label index) pairs in one transaction; an id sent again gets
    the new label. Raises BadLabel or UnknownPrediction, having written nothing, unless every
    label is in 0..num_classes-1 and every id was recorded (queued records included).
    Returns the number of ids stored; they are durable when it returns."""
    labels = {}  # The last label of each id.
    for prediction_id, label in items:
      if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not (
          0 <= label < num_classes):
        raise BadLabel(label, num_classes)
      labels[prediction_id] = int(label)
    if not labels:
      return 0
    insert = (postgresql if self.engine.dialect.name == 'postgresql' else sqlite).insert(
        feedback_table)
    upsert = insert.on_conflict_do_update(
        index_elements=['prediction_id'],
        set_={'label': insert.excluded.label, 'received_at': insert.excluded.received_at})
    for attempt in range(2):
      with self.engine.begin() as connection:
        unknown = self._unknown(labels, connection)
        if not unknown:
          received_at = time.time()
          connection.execute(upsert, [{'prediction_id': i, 'label': label,
                                       'received_at': received_at}
                                      for i, label in labels.items()])
          return len(labels)
      if attempt == 0:  # Maybe still in the write queue: a client may send feedback at once.
        self.flush(_FEEDBACK_FLUSH_TIMEOUT_S)
    raise UnknownPrediction(unknown[0])

  def _unknown(self, ids, connection) -> list:
    """The ids (in order) that are not in the predictions table."""
    ids = list(ids)
    strange = [i for i in ids if not isinstance(i, str)]
    if strange:
      return strange
    known, column = set(), predictions_table.c.prediction_id
    for start in range(0, len(ids), _IN_CHUNK):
      chunk = ids[start:start + _IN_CHUNK]
      known.update(connection.scalars(sa.select(column).where(column.in_(chunk))))
    return [i for i in ids if i not in known]

  def predictions(self, since: float | None = None, version: int | None = None,
                  limit: int | None = None) -> list[dict]:
    """Recorded predictions, oldest first, created at `since` or later, of model `version`;
    at most `limit`. Each a dict of the columns, top_k decoded."""
    query = _filtered(sa.select(predictions_table), since, version).limit(limit)
    with self.engine.connect() as connection:
      rows = connection.execute(query).mappings().all()
    return [{**row, 'top_k': json.loads(row['top_k']),
             'summary': None if row['summary'] is None else json.loads(row['summary'])}
            for row in rows]

  def recent(self, version: int, limit: int) -> dict:
    """The last `limit` predictions of `version` that have a drift summary, oldest first, as
    arrays: created_at (n,), predicted (n,) int64, confidence (n,) and summary (n, k)
    float64."""
    p = predictions_table.c
    query = (sa.select(p.created_at, p.predicted, p.confidence, p.summary)
             .where(p.model_version == version, p.confidence.is_not(None),
                    p.summary.is_not(None))
             .order_by(p.created_at.desc(), p.prediction_id.desc()).limit(limit))
    with self.engine.connect() as connection:
      rows = connection.execute(query).all()[::-1]
    summaries = [json.loads(row.summary) for row in rows]
    width = len(summaries[0]) if summaries else 0
    return {'created_at': np.array([row.created_at for row in rows], np.float64),
            'predicted': np.array([row.predicted for row in rows], np.int64),
            'confidence': np.array([row.confidence for row in rows], np.float64),
            'summary': np.array(summaries, np.float64).reshape(len(rows), width)}

  def labelled(self, since: float | None = None, version: int | None = None) -> list[dict]:
    """Predictions that have a feedback label, oldest first: dicts of prediction_id,
    model_version, predicted, label and created_at."""
    p = predictions_table.c
    query = sa.select(p.prediction_id, p.model_version, p.predicted, feedback_table.c.label,
                      p.created_at).join(feedback_table)
    with self.engine.connect() as connection:
      return [dict(row) for row in connection.execute(
          _filtered(query, since, version)).mappings()]

  def labelled_inputs(self, versions=None) -> list[dict]:
    """Labelled predictions whose input bytes were kept (`serve --log-inputs`), oldest first:
    dicts of prediction_id, model_version, predicted, label, received_at and input (bytes);
    of the `versions` given, else of every version."""
    p, f = predictions_table.c, feedback_table.c
    query = (sa.select(p.prediction_id, p.model_version, p.predicted, f.label, f.received_at,
                       p.input).join(feedback_table).where(p.input.is_not(None))
             .order_by(p.created_at, p.prediction_id))
    if versions is not None:
      query = query.where(p.model_version.in_([int(v) for v in versions]))
    with self.engine.connect() as connection:
      return [dict(row) for row in connection.execute(query).mappings()]

  def counts(self) -> dict[str, int]:
    """{'predictions': n, 'feedback': n} committed so far."""
    with self.engine.connect() as connection:
      return {table.name: connection.scalar(sa.select(sa.func.count()).select_from(table))
              for table in (predictions_table, feedback_table)}


def _filtered(query, since, version):
  p = predictions_table.c
  if since is not None:
    query = query.where(p.created_at >= since)
  if version is not None:
    query = query.where(p.model_version == version)
  return query.order_by(p.created_at, p.prediction_id)


def _plain(value):
  """numpy scalars in top_k, as JSON numbers."""
  return value.item()

