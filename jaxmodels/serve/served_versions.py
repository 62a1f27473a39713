"""The versions a server holds in memory and the routing table over them.

Each loaded version has its own compiled batch buckets and `Batcher`, compiled and run once
before it takes traffic. The table (`Routing`: the serving state and the served versions) is
never changed in place: a change builds a new one and replaces one reference, so a request
reads one consistent table. A version leaving the table closes its batcher only once the
requests already routed to it have finished.

`serve DIR` on a single artifact serves it as a repository of one (`OneArtifact`, version 1,
whose state cannot change and is never written into the artifact directory).
"""
import asyncio
import contextlib
import dataclasses
import threading

import numpy as np

from jaxmodels.errors import InputError, one_line
from jaxmodels.serve import model_repository, request_batching
from jaxmodels.serve.exported_model import load_exported
from jaxmodels.serve.model_repository import BadValue, ServingState, StateConflict
from jaxmodels.serve.monitor import load_reference


class OneArtifact:
  """The repository interface (`model_repository.ModelRepository`'s read side and `change`)
  over one artifact directory: version 1, the champion, always."""

  def __init__(self, directory: str):
    self.path = directory
    self.model = load_exported(directory)

  def versions(self) -> list[int]:
    return [1]

  def version_dir(self, version: int) -> str:
    if version != 1:
      raise model_repository.VersionNotFound(
          f'version {version} is not served: a single artifact is version 1', key='version')
    return self.path

  def manifest(self, version: int) -> dict:
    self.version_dir(version)
    return self.model.manifest

  def version_summary(self, version: int) -> dict:
    return model_repository.summary_of(version, self.manifest(version))

  def state(self) -> ServingState:
    return ServingState(champion=1, loaded=(1,))

  def pin_state(self) -> ServingState:
    return self.state()

  def record_promotion(self, entry: dict) -> None:
    """Nothing: version 1 is always the champion, and the artifact directory is not written."""

  def change(self, transition, *args) -> ServingState:
    if transition(self.state(), *args) == self.state():  # Its own errors first.
      return self.state()
    raise StateConflict('this server serves one artifact, not a repository: export versions '
                        'with `jaxmodels export RUN --repo REPO` and serve REPO',
                        key='version')


class ServedVersion:
  """One version in memory: its artifact, its batcher (after `start`), its drift reference
  (None when exported without one) and the number of requests routed to it that have not
  finished (`in_flight`, changed on the event loop)."""

  def __init__(self, version: int, model, batcher: request_batching.Batcher, reference=None):
    self.version, self.model, self.batcher = version, model, batcher
    self.reference = reference
    self.in_flight = 0

  def summaries(self, examples: np.ndarray):
    """The examples' drift summaries (B, k), or None without a reference."""
    return None if self.reference is None else self.reference.summarize(examples)

  @property
  def class_names(self):
    return self.model.class_names

  async def retire(self) -> None:
    """Waits for the requests routed here, then stops the batcher (off the event loop)."""
    while self.in_flight:
      await asyncio.sleep(0.01)
    await asyncio.to_thread(self.batcher.close)


def build_version(version: int, directory: str, *, input_spec: dict | None, buckets,
                  max_wait_ms: float, observe, model=None) -> ServedVersion:
  """Loads, compiles every bucket and runs each once; blocking (call it in a thread). An
  artifact that cannot serve raises a RepositoryError saying why; nothing is left running."""
  try:
    model = model or load_exported(directory)
  except InputError as e:
    raise BadValue(f'version {version} cannot be loaded: {e}', key='version') from None
  except Exception as e:  # A corrupt artifact: any error of the deserialiser.
    raise BadValue(f'version {version} cannot be loaded ({type(e).__name__}: {one_line(e)})',
                   key='version') from None
  if input_spec is not None and model.manifest.get('input') != input_spec:
    raise StateConflict(f'version {version} takes other inputs than the champion '
                        f'({model.manifest.get("input")} vs {input_spec}): every version of a '
                        'repository shares one input spec', key='version')
  try:
    reference = load_reference(directory, model.manifest)
  except InputError as e:
    raise BadValue(f'version {version} cannot be loaded: {e}', key='version') from None
  try:
    functions = {size: model.compile(size) for size in buckets}
    for size, fn in functions.items():  # Run each once: the first call does any setup.
      fn(np.zeros((size, *model.input_shape), model.input_dtype))
  except Exception as e:
    raise BadValue(f'version {version} does not compile here ({type(e).__name__}: '
                   f'{one_line(e)})', key='version') from None
  return ServedVersion(version, model, request_batching.Batcher(functions, max_wait_ms, observe),
                       reference)


@dataclasses.dataclass(frozen=True)
class Routing:
  """The serving state and the versions it serves (every one of `state.loaded`)."""
  state: ServingState
  served: dict

  def pick(self, request_id: str) -> ServedVersion:
    return self.served[model_repository.route(self.state, request_id)]

  @property
  def shadow(self) -> ServedVersion | None:
    return None if self.state.shadow is None else self.served[self.state.shadow]


class VersionTable:
  """The served versions of `repo` and the changes to them. `routing` is the current table;
  `change(transition, *args)` applies a `model_repository` transition: the versions the new
  state loads are compiled first (in a thread), then the state is saved, then the table
  swapped, then the versions it dropped retire. Any failure leaves state and table as they
  were. `warming`: marks the threads compiling a version as warming up (`Warming`)."""

  def __init__(self, repo, *, buckets, max_wait_ms: float, observe, warming):
    self.repo, self.buckets, self.max_wait_ms, self.observe = repo, buckets, max_wait_ms, observe
    self.warming = warming  # A context manager: compilations inside are warm-up ones.
    state = repo.state()
    if state.champion is None:
      raise InputError(f'{repo.path} has no champion: export a version into it', key='repo')
    self.input_spec = repo.manifest(state.champion).get('input')
    self.routing: Routing | None = None
    self._lock = asyncio.Lock()
    self.gate_lock = asyncio.Lock()  # Held across a promotion's gate check and its change.

  def _build(self, version: int) -> ServedVersion:
    model = getattr(self.repo, 'model', None)  # A single artifact is loaded already.
    with self.warming():
      return build_version(version, self.repo.version_dir(version), input_spec=self.input_spec,
                           buckets=self.buckets, max_wait_ms=self.max_wait_ms,
                           observe=self.observe, model=model)

  def start(self) -> None:
    """Builds every version the saved state loads (blocking: before the first request)."""
    state = self.repo.pin_state()
    built = {}
    try:
      for version in state.loaded:
        built[version] = self._build(version)
    except BaseException:
      for served in built.values():
        served.batcher.close()
      raise
    self.routing = Routing(state, built)

  async def change(self, transition, *args) -> ServingState:
    async with self._lock:
      current = self.routing
      planned = transition(current.state, *args)  # Raises before anything is built.
      built = {}
      try:
        for version in sorted(set(planned.loaded) - set(current.served)):
          built[version] = await asyncio.to_thread(self._build, version)
        saved = await asyncio.to_thread(self.repo.change, transition, *args)
        missing = set(saved.loaded) - set(current.served) - set(built)
        if missing:  # Another process changed the repository between: rebuild from it.
          raise StateConflict('the serving state changed on disk meanwhile: restart the '
                              'server to serve it', key='version')
      except BaseException:
        for served in built.values():
          await asyncio.to_thread(served.batcher.close)
        raise
      served = {**current.served, **built}
      self.routing = Routing(saved, {v: served[v] for v in saved.loaded})
      for version, old in served.items():
        if version not in saved.loaded:
          await old.retire()
      return saved

  def close(self) -> None:
    for served in (self.routing.served.values() if self.routing else ()):
      served.batcher.close()
    self.routing = None


class Warming:
  """Which threads are compiling a version before it serves (their compilations are warm-up
  ones): `with warming(): ...` around a build, `warming.active()` in the compile listener."""

  def __init__(self):
    self._threads, self._lock = set(), threading.Lock()

  @contextlib.contextmanager
  def __call__(self):
    ident = threading.get_ident()
    with self._lock:
      self._threads.add(ident)
    try:
      yield
    finally:
      with self._lock:
        self._threads.discard(ident)

  def active(self) -> bool:
    with self._lock:
      return threading.get_ident() in self._threads
