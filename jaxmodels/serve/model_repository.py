"""The versions of one model on disk and which of them serve.

A repository is a directory of complete artifacts, `REPO/1/`, `REPO/2/`, ... (each as
`export_run` writes it), and `REPO/serving.json`, the serving state: the champion, a canary
with its share of the requests, a shadow, the loaded versions and the champions before. A
version appears whole (written beside, then renamed to its number) and its number is never
used again, even after its directory is removed.

Transitions of the state (`load`, `promote`, `canary`, `rollback`, ...) are pure functions
of a `ServingState`; one that cannot apply raises a `RepositoryError` whose `http_status` is
404 (unknown version), 409 (wrong state) or 422 (bad value), and changes nothing.
"""
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection

from jaxmodels.errors import DataError, InputError
from jaxmodels.serve import artifact

STATE, NEXT_VERSION, LOCK = 'serving.json', '.next_version', '.lock'
PROMOTIONS = 'promotions.jsonl'  # One line per promotion: the gate's evidence, forced or not.
ROUTE_BUCKETS = 10_000  # A canary share resolves to 0.01 %.
STORE_FILE = 'monitor.db'  # Where a server of the repository records predictions by default.


class RepositoryError(InputError):
  """A version or state change that cannot apply; `http_status` is the app's answer."""
  http_status = 409


class VersionNotFound(RepositoryError):
  http_status = 404


class StateConflict(RepositoryError):
  http_status = 409


class BadValue(RepositoryError):
  http_status = 422


@dataclasses.dataclass(frozen=True)
class ServingState:
  """Which versions serve: the champion answers requests, the canary answers
  `canary_percent` % of them (chosen by `route`), the shadow sees copies of them; `loaded`
  (sorted) are the versions held in memory; `previous_champions`, oldest first, are where
  `rollback` goes."""
  champion: int | None = None
  canary: int | None = None
  canary_percent: float = 0.0
  shadow: int | None = None
  loaded: tuple[int, ...] = ()
  previous_champions: tuple[int, ...] = ()

  def to_json(self) -> dict:
    data = dataclasses.asdict(self)
    return {**data, 'loaded': list(self.loaded),
            'previous_champions': list(self.previous_champions)}

  @classmethod
  def from_json(cls, data) -> 'ServingState':
    """The state `to_json` gave; DataError for anything else."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict) or sorted(data) != sorted(names):
      raise DataError(f'a serving state has exactly the keys {", ".join(names)}', key='repo')
    number = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
    percent = data['canary_percent']
    if not (all(data[k] is None or number(data[k]) for k in ('champion', 'canary', 'shadow'))
            and all(isinstance(data[k], list) and all(map(number, data[k]))
                    for k in ('loaded', 'previous_champions'))
            and isinstance(percent, (int, float)) and not isinstance(percent, bool)
            and 0 <= percent < 100 and (data['canary'] is None) == (percent == 0)):
      raise DataError('a serving state holds version numbers (>= 1 or null), lists of them and '
                      'a canary_percent in [0, 100), 0 exactly when there is no canary',
                      key='repo')
    return cls(**{**data, 'canary_percent': float(percent), 'loaded': tuple(data['loaded']),
                  'previous_champions': tuple(data['previous_champions'])})


# Transitions: each returns a new state, or raises and the old one stands.

def load(state: ServingState, version: int, versions: Collection[int]) -> ServingState:
  """`version` (one of the repository's `versions`) joins the loaded ones."""
  if version not in versions:
    raise VersionNotFound(f'version {version} is not in the repository (it has '
                          f'{_listed(versions)})', key='version')
  return dataclasses.replace(state, loaded=tuple(sorted({*state.loaded, version})))


def unload(state: ServingState, version: int) -> ServingState:
  """`version` leaves memory, and the canary or shadow role if it had one."""
  _require_loaded(state, version)
  _require_not_champion(state, version, 'unloaded')
  return dataclasses.replace(_without_role(state, version),
                             loaded=tuple(v for v in state.loaded if v != version))


def promote(state: ServingState, version: int) -> ServingState:
  """`version` (loaded) becomes the champion; the old champion goes onto
  previous_champions. Promoting the champion again changes nothing."""
  _require_loaded(state, version)
  if version == state.champion:
    return state
  previous = state.previous_champions + (() if state.champion is None else (state.champion,))
  return dataclasses.replace(_without_role(state, version), champion=version,
                             previous_champions=previous)


def canary(state: ServingState, version: int, percent: float) -> ServingState:
  """`version` (loaded, not the champion) answers `percent` % of the requests, 0 < percent
  < 100."""
  if (isinstance(percent, bool) or not isinstance(percent, (int, float))
      or not 0 < percent < 100):  # NaN fails the comparison too.
    raise BadValue(f'a canary percent is between 0 and 100 (both excluded), got {percent!r}',
                   key='percent')
  _require_loaded(state, version)
  _require_not_champion(state, version, 'a canary')
  return dataclasses.replace(_without_role(state, version), canary=version,
                             canary_percent=float(percent))


def shadow(state: ServingState, version: int) -> ServingState:
  """`version` (loaded, not the champion) sees a copy of the requests; its answers are not
  returned."""
  _require_loaded(state, version)
  _require_not_champion(state, version, 'a shadow')
  return dataclasses.replace(_without_role(state, version), shadow=version)


def clear_canary(state: ServingState) -> ServingState:
  return dataclasses.replace(state, canary=None, canary_percent=0.0)


def clear_shadow(state: ServingState) -> ServingState:
  return dataclasses.replace(state, shadow=None)


def rollback(state: ServingState, versions: Collection[int]) -> ServingState:
  """The last previous champion (still one of `versions`) serves again, loaded; the canary
  is cleared. The champion it replaces stays loaded and can be promoted again."""
  if not state.previous_champions:
    raise StateConflict('there is no previous champion to roll back to', key='version')
  target = state.previous_champions[-1]
  if target not in versions:
    raise StateConflict(f'the previous champion, version {target}, is no longer in the '
                        'repository', key='version')
  state = clear_canary(_without_role(state, target))
  return dataclasses.replace(state, champion=target, loaded=tuple(sorted({*state.loaded, target})),
                             previous_champions=state.previous_champions[:-1])


def route_bucket(request_id: str | bytes) -> int:
  """A stable bucket in [0, ROUTE_BUCKETS) for a request id: the first 8 bytes of its
  sha256 as an integer, so the same id lands in the same bucket in every process."""
  data = request_id.encode('utf-8') if isinstance(request_id, str) else request_id
  return int.from_bytes(hashlib.sha256(data).digest()[:8], 'big') % ROUTE_BUCKETS


def route(state: ServingState, request_id: str | bytes) -> int:
  """The version that answers `request_id`: the canary for canary_percent % of the ids (the
  same ones on every retry and every server), the champion for the rest."""
  if state.champion is None:
    raise StateConflict('no version is the champion: promote one', key='version')
  share = round(state.canary_percent * ROUTE_BUCKETS / 100)
  if state.canary is not None and route_bucket(request_id) < share:
    return state.canary
  return state.champion


def _require_loaded(state: ServingState, version: int) -> None:
  if version not in state.loaded:
    raise StateConflict(f'version {version} is not loaded (loaded: {_listed(state.loaded)}): '
                        'load it first', key='version')


def _require_not_champion(state: ServingState, version: int, what: str) -> None:
  if version == state.champion:
    raise StateConflict(f'version {version} is the champion and cannot be {what}: promote '
                        'another version first', key='version')


def _without_role(state: ServingState, version: int) -> ServingState:
  if state.canary == version:
    state = clear_canary(state)
  return clear_shadow(state) if state.shadow == version else state


def _listed(versions) -> str:
  return ', '.join(map(str, sorted(versions))) or 'none'


def summary_of(version: int, manifest: dict) -> dict:
  """{'version', 'run': {'workdir', 'task', 'step', 'model'}, 'test', 'created_at'}: what a
  version is, from its artifact's manifest (`model` is the model's name)."""
  run = manifest.get('run') or {}
  return {'version': version,
          'run': {'workdir': run.get('workdir'), 'task': run.get('task'),
                  'step': run.get('step'), 'model': (run.get('model') or {}).get('name')},
          'test': run.get('test'), 'created_at': manifest.get('exported_at')}


class ModelRepository:
  """The repository directory `path` (created by the first `add_version`)."""

  def __init__(self, path):
    self.path = os.fspath(path)
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise InputError(f'{self.path} is not a directory', key='repo')
    if self.is_single_artifact(self.path):
      raise InputError(f'{self.path} is one artifact (manifest.json inside), not a repository '
                       'of versions', key='repo')

  @staticmethod
  def is_single_artifact(path) -> bool:
    """Whether `path` is one artifact directory (`export --out`) rather than a repository."""
    return os.path.isfile(os.path.join(path, artifact.MANIFEST))

  def versions(self) -> list[int]:
    """The complete versions, ascending: numbered directories with a manifest.json."""
    return sorted(int(name) for name in self._numbered()
                  if os.path.isfile(os.path.join(self.path, name, artifact.MANIFEST)))

  def version_dir(self, version: int) -> str:
    if version not in self.versions():
      raise VersionNotFound(f'version {version} is not in {self.path} (it has '
                            f'{_listed(self.versions())})', key='version')
    return os.path.join(self.path, str(version))

  def manifest(self, version: int) -> dict:
    with open(os.path.join(self.version_dir(version), artifact.MANIFEST), encoding='utf-8') as f:
      return json.load(f)

  def version_summary(self, version: int) -> dict:
    """What a version is, from its manifest (`summary_of`)."""
    return summary_of(version, self.manifest(version))

  def add_version(self, write_artifact: Callable[[str], object]) -> int:
    """Calls `write_artifact(directory)` on a new empty directory inside the repository,
    then makes that directory the next version in one rename; returns its number. If
    `write_artifact` raises, nothing is added."""
    os.makedirs(self.path, exist_ok=True)
    incoming = tempfile.mkdtemp(prefix='.new.partial-', dir=self.path)
    try:
      write_artifact(incoming)
      if not os.path.isfile(os.path.join(incoming, artifact.MANIFEST)):
        raise InputError(f'the artifact written into {self.path} has no {artifact.MANIFEST}: '
                         'no version was added', key='repo')
      os.chmod(incoming, 0o777 & ~_UMASK)  # mkdtemp's 0700 -> as mkdir's.
      return self._claim(incoming)
    finally:
      shutil.rmtree(incoming, ignore_errors=True)

  def state(self) -> ServingState:
    """serving.json; without one, the newest version as the only loaded one, the champion."""
    try:
      with open(os.path.join(self.path, STATE), encoding='utf-8') as f:
        text = f.read()
    except FileNotFoundError:
      newest = self.versions()[-1:]
      return ServingState(champion=newest[0] if newest else None, loaded=tuple(newest))
    try:
      return ServingState.from_json(json.loads(text))
    except (ValueError, DataError) as e:
      raise DataError(f'{os.path.join(self.path, STATE)}: {e}', key='repo') from None

  def pin_state(self) -> ServingState:
    """The state, saved when serving.json does not exist yet: a server pins what it serves,
    so that a version exported while it runs does not become the champion on disk."""
    with self._locked():
      state = self.state()
      if not os.path.exists(os.path.join(self.path, STATE)):
        self.save_state(state)
      return state

  def save_state(self, state: ServingState) -> None:
    """Replaces serving.json in one rename, on disk before it returns: a reader sees the old
    state or the new one, and a restart after a crash reads the last one saved."""
    os.makedirs(self.path, exist_ok=True)
    _write_durably(os.path.join(self.path, STATE), json.dumps(state.to_json(), indent=2) + '\n')

  def change(self, transition, *args) -> ServingState:
    """Applies `transition(state, *args)` to the saved state and saves the result, with other
    changes of this repository waiting (a read-modify-write, never a lost update)."""
    with self._locked():
      state = transition(self.state(), *args)
      self.save_state(state)
      return state

  def record_promotion(self, entry: dict) -> None:
    """Appends `entry` as one line of REPO/promotions.jsonl, on disk before it returns."""
    with self._locked(), open(os.path.join(self.path, PROMOTIONS), 'a', encoding='utf-8') as f:
      f.write(json.dumps(entry, sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())

  def promotions(self) -> list[dict]:
    """The promotions recorded so far, oldest first."""
    try:
      with open(os.path.join(self.path, PROMOTIONS), encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
      return []

  def _numbered(self) -> list[str]:
    try:
      names = os.listdir(self.path)
    except FileNotFoundError:
      return []
    return [n for n in names if n.isascii() and n.isdigit() and n == str(int(n)) and int(n) > 0]

  def _next_number(self) -> int:
    """One past every number ever taken: those on disk (complete or not) and the mark."""
    try:
      with open(os.path.join(self.path, NEXT_VERSION), encoding='utf-8') as f:
        mark = int(f.read())
    except FileNotFoundError:
      mark = 1
    except ValueError:
      raise DataError(f'{os.path.join(self.path, NEXT_VERSION)} holds no version number: '
                      'write into it one past the highest version ever added', key='repo') from None
    return max([mark, *(int(n) + 1 for n in self._numbered())])

  def _claim(self, incoming: str) -> int:
    """Renames `incoming` to the next free number. A process killed half-way leaves at most
    an empty numbered directory: never a version, its number never reused."""
    with self._locked():
      number = self._next_number()
      while True:
        # The mark moves first: a crash before the rename skips a number, never reuses one.
        _write_durably(os.path.join(self.path, NEXT_VERSION), f'{number + 1}\n')
        target = os.path.join(self.path, str(number))
        try:
          # mkdir is the claim: it fails on any existing name, where a rename would replace
          # an empty directory. The rename then puts the whole version over it in one step.
          os.mkdir(target)
          os.rename(incoming, target)
        except OSError as e:
          if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
          number += 1
          continue
        _fsync_directory(self.path)
        return number

  @contextlib.contextmanager
  def _locked(self):
    """Exclusive among the processes (and threads) that change this repository."""
    os.makedirs(self.path, exist_ok=True)
    with open(os.path.join(self.path, LOCK), 'a') as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      yield  # Closing the file releases the lock.


def _current_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


_UMASK = _current_umask()  # Read once, at import: os.umask is process-wide.


def _write_durably(path: str, text: str) -> None:
  """`text` into `path` through a temporary file beside it, fsynced, renamed over it, then the
  directory fsynced; if anything fails, the old file stands and no temporary remains."""
  directory = os.path.dirname(path)
  fd, temporary = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                                   dir=directory)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 -> as open's.
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temporary)
    raise
  _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
