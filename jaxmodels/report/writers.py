"""Metric writers: TensorBoard event files (tensorboardX) and a JSONL log.

Every writer has write_scalars(step, {name: float}), write_text(step, name, text),
flush() and close(). Only process 0 of a multi-host run should write: pass
`enabled=False` elsewhere to get a writer that does nothing.
"""
import json
import math
import os
import time
from collections.abc import Mapping, Sequence

from jaxmodels.errors import ConfigError


class JsonlWriter:
  """One JSON object per line: {"step": int, "time": unix seconds, name: value, ...}."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, 'a', encoding='utf-8', buffering=1)  # Line-buffered: tail -f works.

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    # JSON has no NaN/inf; store them as strings so the log stays parseable.
    values = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
    self._file.write(json.dumps({'step': int(step), 'time': time.time(), **values}) + '\n')

  def write_text(self, step: int, name: str, text: str):
    self._file.write(json.dumps({'step': int(step), 'time': time.time(), name: text}) + '\n')

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorBoardWriter:
  """Scalars and text as TensorBoard event files under `logdir`."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # Imported here: it costs time at import.
    self._writer = SummaryWriter(logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), int(step))

  def write_text(self, step: int, name: str, text: str):
    # TensorBoard renders text as markdown; indent to keep fixed-width tables.
    self._writer.add_text(name, '    ' + text.replace('\n', '\n    '), int(step))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter:
  """Fans every call out to several writers. As a context manager it closes them on exit."""

  def __init__(self, writers: Sequence):
    self.writers = list(writers)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_text(self, step, name, text):
    for w in self.writers:
      w.write_text(step, name, text)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def prepare_workdir(workdir: str) -> None:
  """Creates workdir; a ConfigError (one line, key 'workdir') if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'cannot write to workdir {workdir!r} ({e.strerror}): pick a writable '
                      'directory', key='workdir') from None


def create_writer(workdir: str, *, enabled: bool = True) -> MultiWriter:
  """TensorBoard events in `workdir/tensorboard` plus `workdir/metrics.jsonl`."""
  if not enabled:
    return MultiWriter([])
  os.makedirs(workdir, exist_ok=True)
  return MultiWriter([TensorBoardWriter(os.path.join(workdir, 'tensorboard')),
                      JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])


def read_logged_rows(workdir: str, max_step: int) -> tuple[list, list]:
  """(train rows, eval rows) from workdir/metrics.jsonl up to `max_step`, prefixes removed.

  A resumed run uses them to draw its curves from the start. Missing file: ([], []).
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  rows = {'train': [], 'eval': []}
  if not os.path.exists(path):
    return rows['train'], rows['eval']
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      if record.get('step', max_step + 1) > max_step:
        continue
      for split in rows:
        values = {k.split('/', 1)[1]: float(v) for k, v in record.items()
                  if k.startswith(f'{split}/')}
        if values:
          rows[split].append({'step': record['step'], **values})
  return rows['train'], rows['eval']
