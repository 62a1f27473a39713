"""A model repository: `export --repo` adds whole versions under numbers never used again,
also when writers race; the serving state changes only through valid transitions, is saved
atomically and survives a kill; the canary gets its share of request ids, the same ones on
every retry."""
import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from deploy_run import images, trained_once
from jaxmodels import console
from jaxmodels.errors import DataError, InputError
from jaxmodels.serve import model_repository as mr
from jaxmodels.serve.artifact import Artifact
from jaxmodels.serve.model_repository import ModelRepository, ServingState
from model_repository_worker import STATE as WORKER_STATE
from model_repository_worker import fake_artifact

WORKER = pathlib.Path(__file__).with_name('model_repository_worker.py')
VERSIONS = (1, 2, 3, 4)
# Champion 2 (after 1), canary 3 on 10 %, version 4 on disk but not loaded.
SERVING = ServingState(champion=2, canary=3, canary_percent=10.0, loaded=(1, 2, 3),
                       previous_champions=(1,))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  return trained_once(tmp_path_factory)[0]


def _export(*args) -> int:
  return console.main(['export', *map(str, args), '--platforms', 'cpu'])


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def test_export_repo_adds_numbered_versions_that_equal_out_and_never_reuses_one(
    trained, tmp_path, capsys):
  repo, single = tmp_path / 'models', tmp_path / 'single'
  for version in (1, 2):
    assert _export(trained, '--repo', repo) == 0
    assert f' to {repo / str(version)} (' in capsys.readouterr().out
  assert _export(trained, '--out', single) == 0
  repository = ModelRepository(repo)
  assert repository.versions() == [1, 2]
  inputs = images(16, 3)[0].astype(np.float32)
  expected = Artifact(str(single)).logits(inputs)
  for version in (1, 2):
    np.testing.assert_array_equal(Artifact(repository.version_dir(version)).logits(inputs),
                                  expected)
  manifest = repository.manifest(2)
  assert repository.version_summary(2) == {
      'version': 2, 'test': manifest['run']['test'], 'created_at': manifest['exported_at'],
      'run': {'workdir': os.path.abspath(trained), 'task': 'image_classification', 'step': 20,
              'model': 'mlp'}}
  assert manifest['run']['test'] and manifest['exported_at']
  assert os.stat(repository.version_dir(1)).st_mode & 0o777 == 0o777 & ~_umask()  # As mkdir's.

  shutil.rmtree(repo / '2')
  assert _export(trained, '--repo', repo) == 0
  assert repository.versions() == [1, 3]
  assert sorted(os.listdir(repo)) == ['.lock', '.next_version', '1', '3']  # No temporaries.

  assert ModelRepository.is_single_artifact(single)
  assert not ModelRepository.is_single_artifact(repo)
  assert _export(trained, '--repo', single) == 2  # One artifact is not a repository.
  assert 'not a repository' in capsys.readouterr().err
  assert _export(tmp_path, '--repo', repo) == 2  # Not a run: nothing added, nothing left.
  assert sorted(os.listdir(repo)) == ['.lock', '.next_version', '1', '3']
  for flags in ([], ['--out', tmp_path / 'a', '--repo', repo]):
    with pytest.raises(SystemExit):  # Exactly one of --out and --repo.
      _export(trained, *flags)


def test_racing_writers_get_distinct_complete_versions(tmp_path):
  repository = ModelRepository(tmp_path / 'repo')
  start = threading.Barrier(8)

  def add(tag):
    start.wait()
    return repository.add_version(fake_artifact(str(tag)))

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    numbers = list(pool.map(add, range(8)))
  assert sorted(numbers) == list(range(1, 9))
  assert [repository.manifest(n)['tag'] for n in numbers] == [str(t) for t in range(8)]

  # Two processes, released together by a file appearing.
  go = tmp_path / 'go'
  workers = [subprocess.Popen([sys.executable, str(WORKER), 'add', str(repository.path), '5',
                               str(go)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
  for worker in workers:
    assert worker.stdout.readline().strip() == 'ready'
  go.touch()
  numbers = [int(n) for worker in workers for n in worker.communicate(timeout=60)[0].split()]
  assert all(worker.returncode == 0 for worker in workers)
  assert sorted(numbers) == list(range(9, 19))
  assert repository.versions() == list(range(1, 19))
  assert not [n for n in os.listdir(repository.path) if 'partial' in n]


def test_a_taken_number_is_skipped_and_half_written_directories_are_not_versions(
    tmp_path, monkeypatch):
  repository = ModelRepository(tmp_path / 'repo')
  for tag in 'ab':
    repository.add_version(fake_artifact(tag))
  crashed = tmp_path / 'repo' / '.3.partial-x1y2'  # A writer killed before its rename,
  crashed.mkdir()
  fake_artifact('crashed')(str(crashed))  # its files all there.
  (tmp_path / 'repo' / '3').mkdir()  # A number taken by something without a manifest.
  assert repository.versions() == [1, 2]
  with pytest.raises(RuntimeError):  # A failed writer adds nothing and uses no number.
    repository.add_version(lambda directory: (_ for _ in ()).throw(RuntimeError('disk full')))
  with pytest.raises(InputError, match='no manifest.json'):
    repository.add_version(lambda directory: None)
  assert repository.add_version(fake_artifact('c')) == 4
  # A writer whose idea of the next number is stale (written without the lock) moves on.
  monkeypatch.setattr(ModelRepository, '_next_number', lambda self: 1)
  assert repository.add_version(fake_artifact('d')) == 5
  assert repository.versions() == [1, 2, 4, 5]
  assert repository.manifest(5) == {'tag': 'd'} and repository.manifest(1) == {'tag': 'a'}
  leftovers = [n for n in os.listdir(tmp_path / 'repo') if n.startswith('.') and n != '.lock']
  assert sorted(leftovers) == ['.3.partial-x1y2', '.next_version']
  with pytest.raises(mr.VersionNotFound, match='version 3 is not in'):
    repository.version_dir(3)


def test_transitions_move_the_roles():
  state = ServingState(champion=1, loaded=(1,))
  state = mr.load(mr.load(state, 3, VERSIONS), 2, VERSIONS)
  assert state.loaded == (1, 2, 3) and mr.load(state, 2, VERSIONS) == state
  state = mr.canary(state, 2, 20)
  assert (state.canary, state.canary_percent) == (2, 20.0)
  state = mr.shadow(state, 3)
  assert state.shadow == 3
  state = mr.shadow(state, 2)  # One role per version: the canary becomes the shadow.
  assert (state.canary, state.canary_percent, state.shadow) == (None, 0.0, 2)
  state = mr.canary(mr.canary(state, 3, 5), 2, 12.5)
  assert (state.canary, state.canary_percent, state.shadow) == (2, 12.5, None)
  assert mr.clear_canary(state) == ServingState(champion=1, loaded=(1, 2, 3))
  assert mr.clear_shadow(mr.shadow(state, 3)) == state

  state = mr.promote(state, 2)  # The canary wins.
  assert state == ServingState(champion=2, loaded=(1, 2, 3), previous_champions=(1,))
  assert mr.promote(state, 2) == state
  state = mr.unload(mr.canary(state, 3, 30), 3)  # Unloading the canary ends it.
  assert state == ServingState(champion=2, loaded=(1, 2), previous_champions=(1,))
  state = mr.unload(state, 1)
  assert state.loaded == (2,)

  state = mr.promote(mr.load(state, 4, VERSIONS), 4)
  assert state == ServingState(champion=4, loaded=(2, 4), previous_champions=(1, 2))
  state = mr.rollback(mr.canary(state, 2, 50), VERSIONS)
  assert state == ServingState(champion=2, loaded=(2, 4), previous_champions=(1,))
  state = mr.rollback(state, VERSIONS)  # Back to 1, unloaded before: loaded again.
  assert state == ServingState(champion=1, loaded=(1, 2, 4))


@pytest.mark.parametrize('transition, args, error, words', [
    (mr.load, (9, VERSIONS), mr.VersionNotFound, 'version 9 is not in the repository'),
    (mr.promote, (4,), mr.StateConflict, 'version 4 is not loaded'),
    (mr.canary, (3, 150), mr.BadValue, 'between 0 and 100'),
    (mr.canary, (3, 0), mr.BadValue, 'between 0 and 100'),
    (mr.canary, (3, 100), mr.BadValue, 'between 0 and 100'),
    (mr.canary, (3, float('nan')), mr.BadValue, 'between 0 and 100'),
    (mr.canary, (3, '20'), mr.BadValue, 'between 0 and 100'),
    (mr.canary, (2, 20), mr.StateConflict, 'version 2 is the champion'),
    (mr.canary, (4, 20), mr.StateConflict, 'version 4 is not loaded'),
    (mr.shadow, (2,), mr.StateConflict, 'version 2 is the champion'),
    (mr.shadow, (4,), mr.StateConflict, 'version 4 is not loaded'),
    (mr.unload, (2,), mr.StateConflict, 'version 2 is the champion'),
    (mr.unload, (4,), mr.StateConflict, 'version 4 is not loaded'),
    (mr.rollback, ((2, 3),), mr.StateConflict, 'version 1, is no longer in the repository'),
])
def test_a_transition_that_cannot_apply_is_one_line_with_a_status_and_changes_nothing(
    tmp_path, transition, args, error, words):
  repository = ModelRepository(tmp_path / 'repo')
  repository.save_state(SERVING)
  saved = (tmp_path / 'repo' / 'serving.json').read_bytes()
  with pytest.raises(error, match=words) as raised:
    repository.change(transition, *args)
  assert isinstance(raised.value, InputError) and raised.value.key in ('version', 'percent')
  assert raised.value.http_status == {mr.VersionNotFound: 404, mr.StateConflict: 409,
                                      mr.BadValue: 422}[error]
  assert '\n' not in str(raised.value)
  assert (tmp_path / 'repo' / 'serving.json').read_bytes() == saved
  assert repository.state() == SERVING


def test_rollback_without_a_previous_champion_and_route_without_a_champion_are_409():
  with pytest.raises(mr.StateConflict, match='no previous champion') as raised:
    mr.rollback(ServingState(champion=1, loaded=(1,)), VERSIONS)
  assert raised.value.http_status == 409
  with pytest.raises(mr.StateConflict, match='no version is the champion') as raised:
    mr.route(ServingState(), 'request-1')
  assert raised.value.http_status == 409


def test_serving_state_round_trips_and_defaults_to_the_newest_version(tmp_path):
  repository = ModelRepository(tmp_path / 'repo')
  assert repository.state() == ServingState()
  for tag in 'ab':
    repository.add_version(fake_artifact(tag))
  assert repository.state() == ServingState(champion=2, loaded=(2,))
  repository.save_state(SERVING)
  assert ModelRepository(tmp_path / 'repo').state() == SERVING
  on_disk = json.loads((tmp_path / 'repo' / 'serving.json').read_text())
  assert on_disk == {'champion': 2, 'canary': 3, 'canary_percent': 10.0, 'shadow': None,
                     'loaded': [1, 2, 3], 'previous_champions': [1]}
  assert ServingState.from_json(SERVING.to_json()) == SERVING
  for bad in ({**on_disk, 'canary': None}, {**on_disk, 'loaded': [0]}, {'champion': 2}):
    (tmp_path / 'repo' / 'serving.json').write_text(json.dumps(bad))
    with pytest.raises(DataError, match='serving.json: a serving state'):
      repository.state()
  (tmp_path / 'repo' / 'serving.json').write_text('{"champ')
  with pytest.raises(DataError, match='serving.json'):
    repository.state()


def test_concurrent_changes_are_never_lost(tmp_path):
  repository = ModelRepository(tmp_path / 'repo')
  for tag in range(8):
    repository.add_version(fake_artifact(str(tag)))
  repository.save_state(ServingState(champion=1, loaded=(1,)))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda v: repository.change(mr.load, v, repository.versions()), range(2, 9)))
  assert repository.state().loaded == tuple(range(1, 9))


def test_save_state_is_atomic(tmp_path, monkeypatch):
  repository = ModelRepository(tmp_path / 'repo')
  repository.save_state(SERVING)
  before = (tmp_path / 'repo' / 'serving.json').read_bytes()

  def replace(*args):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'replace', replace)
  with pytest.raises(OSError, match='No space'):
    repository.save_state(mr.promote(SERVING, 3))
  monkeypatch.undo()
  assert (tmp_path / 'repo' / 'serving.json').read_bytes() == before
  assert os.listdir(tmp_path / 'repo') == ['serving.json']  # No temporary left behind.
  assert oct(os.stat(tmp_path / 'repo' / 'serving.json').st_mode & 0o777) == oct(
      0o666 & ~_umask())


def test_a_state_saved_before_a_kill_is_read_back(tmp_path):
  repository = ModelRepository(tmp_path / 'repo')
  repository.save_state(ServingState(champion=1, loaded=(1,)))
  worker = subprocess.Popen([sys.executable, str(WORKER), 'save', str(repository.path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert worker.stdout.readline().strip() == 'saved'
  finally:
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
  assert worker.returncode == -signal.SIGKILL
  assert ModelRepository(tmp_path / 'repo').state() == WORKER_STATE
  assert os.listdir(tmp_path / 'repo') == ['serving.json']


def test_route_gives_the_canary_its_share_and_an_id_always_the_same_version():
  state = ServingState(champion=1, canary=2, canary_percent=20.0, loaded=(1, 2))
  rng = random.Random(0)
  ids = [f'{rng.getrandbits(128):032x}' for _ in range(20_000)]
  routed = np.array([mr.route(state, i) for i in ids])
  assert abs(np.mean(routed == 2) - 0.20) <= 0.01
  assert set(routed) == {1, 2}
  np.testing.assert_array_equal([mr.route(state, i) for i in ids], routed)  # Retries agree.
  # Pinned buckets (sha256's first 8 bytes mod 10,000): every process and release agrees.
  assert [mr.route_bucket('request-1'), mr.route_bucket(b'b7e1c0de')] == [8355, 1147]
  # Widening the canary keeps the ids it had.
  wider = np.array([mr.route(mr.canary(state, 2, 30), i) for i in ids])
  assert np.all(wider[routed == 2] == 2) and abs(np.mean(wider == 2) - 0.30) <= 0.01
  assert {mr.route(mr.clear_canary(state), i) for i in ids[:1000]} == {1}
