"""`jaxmodels retrain REPO --out WORKDIR`: the serving champion of a model repository (or
--version V) trained further on the feedback its users sent back, as a new run in WORKDIR that
`jaxmodels export WORKDIR --repo REPO` then adds as a version.

The feedback is the labelled predictions whose inputs the server kept (`serve --log-inputs`)
of the versions with V's classes and inputs. A stable hash of each prediction id puts it in
the training part or the held-out part (the same store always gives the same split). The
training part, with a share (--replay) of the champion run's own training split mixed in so
that the model keeps what it knew, becomes WORKDIR/feedback_data/train.npz; the champion run's
test split becomes test.npz. The run starts from the champion run's weights and input
normalisation (`init_from`), with its config and these data, duration, seed and learning rate.
WORKDIR/retrain.json then holds the champion's and the new run's accuracies on the held-out
feedback and on the original test split.

Every check (flags, repository, store, feedback, data) runs before anything is written, and
nothing is ever written into the repository or the store.
"""
import dataclasses
import datetime
import hashlib
import json
import os

import jax
import numpy as np
import sqlalchemy as sa
from flax import traverse_util

from jaxmodels.errors import ConfigError, DataError, InputError, one_line
from jaxmodels.host_memory import reuse_host_memory
from jaxmodels.runs import TrainedRun
from jaxmodels.schema import flatten
from jaxmodels.serve import artifact_export
from jaxmodels.serve.exported_model import load_exported
from jaxmodels.serve.model_repository import STORE_FILE, ModelRepository
from jaxmodels.serve.prediction_store import PredictionStore
from jaxmodels.tasks import runner
from jaxmodels.tasks.extensions import default_extensions
from jaxmodels.tasks.registry import load_test_split, task_named

TASK = 'image_classification'
DATA_DIR, REPORT = 'feedback_data', 'retrain.json'
_HASH_SPAN = 2.0 ** 64  # The first 8 bytes of a sha256, as a share of this.


def add_arguments(parser) -> None:
  parser.add_argument('repo', help='the model repository whose champion is retrained')
  parser.add_argument('--out', required=True, metavar='WORKDIR',
                      help='a new (or empty) directory: the new run, its data (feedback_data/) '
                           'and retrain.json')
  parser.add_argument('--version', type=int, default=None, metavar='V',
                      help='the version to retrain (default: the champion in serving.json, '
                           'else the newest version)')
  parser.add_argument('--store', default=None, metavar='URL',
                      help="the prediction store the server recorded into, a SQLite file or a "
                           "SQLAlchemy URL (default: REPO/monitor.db); it is only read")
  parser.add_argument('--replay', type=float, default=0.5, metavar='R',
                      help="the share of the training examples drawn from the champion run's own "
                           'training split, in [0, 1); 0: feedback only (default: %(default)s)')
  parser.add_argument('--holdout', type=float, default=0.3, metavar='H',
                      help='the share of the feedback held out to compare the champion and the '
                           'new run, in (0, 1), by a stable hash of the prediction ids '
                           '(default: %(default)s)')
  parser.add_argument('--epochs', type=float, default=5.0, metavar='E',
                      help='epochs over the feedback and replayed examples (default: '
                           '%(default)s)')
  parser.add_argument('--learning-rate', type=float, default=None, metavar='LR',
                      help="the peak learning rate (default: the champion run's)")
  parser.add_argument('--seed', type=int, default=0, metavar='S',
                      help='seed of the replay sample, the shuffle and the run (default: '
                           '%(default)s)')


@dataclasses.dataclass
class _Feedback:
  """The usable feedback, decoded: images (N, H, W, C) uint8, labels (N,) int32, the
  prediction ids (N,), the versions it came from, and how many labels were left out."""
  images: np.ndarray
  labels: np.ndarray
  ids: list
  versions: list
  ignored: int


def main(args) -> int:
  reuse_host_memory()  # Before jax's CPU threads take their malloc arenas.
  _check_flags(args)
  repository = ModelRepository(args.repo)
  version, manifest = _version(repository, args.version)
  champion_run = _run_of(manifest, version)
  store = args.store or os.path.join(args.repo, STORE_FILE)
  feedback = _feedback(store, repository, version, manifest)
  held = _held_out(feedback.ids, args.holdout)
  if held.all() or not held.any():
    raise InputError(f'{len(held)} usable feedback label(s) split into {int((~held).sum())} for '
                     f'training and {int(held.sum())} held out (--holdout {args.holdout}): each '
                     'part needs at least 1, so at least 2 labels are needed; collect more '
                     'feedback')
  config = champion_run.config()
  test_images, test_labels = load_test_split(champion_run)
  replay_images, replay_labels = _replay(champion_run, config, int((~held).sum()), args)
  champion = load_exported(repository.version_dir(version))
  task, extensions = task_named(TASK), default_extensions()
  data_dir = os.path.join(args.out, DATA_DIR)
  train_images = np.concatenate([feedback.images[~held], replay_images])
  train_labels = np.concatenate([feedback.labels[~held], replay_labels])
  run_config, overrides = _run_config(task, extensions, config, champion_run.workdir, data_dir,
                                      len(train_labels), args)
  runner.validate(task, run_config, extensions)

  # Checked: from here on, files are written (into --out only).
  os.makedirs(data_dir, exist_ok=True)
  order = np.random.default_rng(args.seed).permutation(len(train_labels))
  names = np.array(manifest['class_names'])
  np.savez(os.path.join(data_dir, 'train.npz'), image=train_images[order],
           label=train_labels[order], class_names=names)
  np.savez(os.path.join(data_dir, 'test.npz'), image=test_images, label=test_labels,
           class_names=names)
  runner.run(task, run_config, args.out, extensions=extensions, overrides=overrides)

  candidate = TrainedRun.load(args.out)
  infer = artifact_export.inference_function(candidate.module, candidate.card['inputs'])
  weights = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(candidate.variables,
                                                                      sep='/').items()}
  evaluation = {}
  for name, images, labels in (('holdout', feedback.images[held], feedback.labels[held]),
                               ('test', test_images, test_labels)):
    inputs = images.astype(np.float32)  # As the server reads them: pixels 0..255.
    evaluation[name] = {
        'examples': len(labels),
        'champion_accuracy': _accuracy(champion.logits, inputs, labels),
        'candidate_accuracy': artifact_export.accuracy(infer, weights, inputs, labels)}
  ids = np.array(feedback.ids)
  result = {
      'repository': os.path.abspath(args.repo), 'champion': version,
      'store': _shown(store) if '://' in store else os.path.abspath(store),
      'feedback': {'labels': len(ids), 'train': int((~held).sum()), 'holdout': int(held.sum()),
                   'versions': feedback.versions, 'holdout_ids': ids[held].tolist(),
                   'train_ids': ids[~held].tolist()},
      'replay': {'fraction': args.replay, 'examples': len(replay_labels)},
      'evaluation': evaluation,
      'created_at': datetime.datetime.now().astimezone().isoformat()}
  with open(os.path.join(args.out, REPORT), 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2)
  _say(result, feedback, args)
  return 0


def _check_flags(args) -> None:
  if not 0 <= args.replay < 1:
    raise InputError(f'--replay is a share in [0, 1), got {args.replay}')
  if not 0 < args.holdout < 1:
    raise InputError(f'--holdout is a share in (0, 1), got {args.holdout}')
  if not args.epochs > 0:
    raise InputError(f'--epochs must be > 0, got {args.epochs}')
  if args.learning_rate is not None and not args.learning_rate > 0:
    raise InputError(f'--learning-rate must be > 0, got {args.learning_rate}')
  if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
    raise InputError(f'{args.out} already exists and is not empty: give --out a new directory')
  repo, out = os.path.realpath(args.repo), os.path.realpath(args.out)
  if out == repo or out.startswith(repo + os.sep):
    raise InputError(f'--out {args.out} is inside the repository {args.repo}: give a directory '
                     'outside it (export adds the new run as a version)')


def _version(repository: ModelRepository, version: int | None) -> tuple[int, dict]:
  """(the version to retrain, its manifest): `version`, else the champion."""
  if not repository.versions():
    raise InputError(f'{repository.path} holds no versions: export a run into it with '
                     '`jaxmodels export WORKDIR --repo REPO`')
  if version is None:
    version = repository.state().champion
    if version is None:
      raise InputError(f'{repository.path} has no champion: promote a version, or give '
                       '--version')
  return version, repository.manifest(version)  # VersionNotFound names the versions there.


def _run_of(manifest: dict, version: int) -> TrainedRun:
  """The finished run version `version` was exported from; InputError unless it is an image
  classification run still on disk."""
  run = manifest.get('run') or {}
  if run.get('task') != TASK or (manifest.get('input') or {}).get('kind') != 'image':
    raise InputError(f'retrain takes image classification runs; version {version} is a '
                     f'{run.get("task")!r} run')
  if not manifest.get('class_names'):
    raise InputError(f'version {version} has no class names in its manifest: export it again')
  if not os.path.isdir(run.get('workdir') or ''):
    raise InputError(f'the run of version {version}, {run.get("workdir")}, is not here: '
                     'retrain where its workdir is')
  return TrainedRun.load(run['workdir'], run.get('step'))


def _feedback(store: str, repository: ModelRepository, version: int, manifest: dict) -> _Feedback:
  """The labelled inputs of the store for the versions with `version`'s classes and inputs,
  decoded as images; InputError for feedback of other classes, labels outside them, or none."""
  rows, labels_without_inputs = _read_store(store)
  spec, names = manifest['input'], manifest['class_names']
  shape, dtype = tuple(spec['shape']), np.dtype(spec['dtype'])
  present, ignored = set(repository.versions()), 0
  usable, checked = [], {}
  for row in rows:
    n = row['model_version']
    if n not in present:  # Its directory was removed: its classes cannot be checked.
      ignored += 1
      continue
    if n not in checked:
      other = repository.manifest(n)
      if other.get('class_names') != names:
        raise InputError(f'feedback for version {n}, whose classes differ from version '
                         f"{version}'s: {_names(other.get('class_names'))} vs {_names(names)}; "
                         'give a store (--store) with the feedback of versions with these '
                         'classes only')
      theirs = other.get('input') or {}
      if (tuple(theirs.get('shape', ())), theirs.get('dtype')) != (shape, spec['dtype']):
        raise InputError(f'feedback for version {n}, whose inputs ({theirs.get("dtype")} '
                         f'{theirs.get("shape")}) differ from version {version}\'s '
                         f'({spec["dtype"]} {list(shape)}): give a store (--store) with the '
                         'feedback of versions with these inputs only')
      checked[n] = True
    if not 0 <= row['label'] < len(names):
      raise InputError(f'the feedback label {row["label"]} of prediction {row["prediction_id"]} '
                       f'is not one of the {len(names)} classes of version {version} (0..'
                       f'{len(names) - 1}): correct it in the store')
    if len(row['input']) != dtype.itemsize * int(np.prod(shape)):
      raise DataError(f'the logged input of prediction {row["prediction_id"]} holds '
                      f'{len(row["input"])} bytes, not those of a {dtype} {list(shape)} example: '
                      'the store does not belong to this repository')
    usable.append(row)
  if not usable:
    if labels_without_inputs:
      raise InputError(f'the {labels_without_inputs} feedback label(s) in {_shown(store)} are for '
                       'predictions whose inputs were not kept: serve with --log-inputs 1 so that '
                       'labelled predictions keep their inputs')
    raise InputError(f'no feedback for version {version} in {_shown(store)}'
                     + (f' ({ignored} label(s) of versions no longer in the repository)'
                        if ignored else '')
                     + ': send labels to /v1/feedback or `jaxmodels feedback import`, from a '
                       'server started with --log-inputs 1')
  raw = np.stack([np.frombuffer(row['input'], dtype).reshape(shape) for row in usable])
  # Stored as training images are: pixels rounded into 0..255.
  images = np.clip(np.nan_to_num(np.round(raw.astype(np.float64))), 0, 255).astype(np.uint8)
  return _Feedback(images, np.array([row['label'] for row in usable], np.int32),
                   [row['prediction_id'] for row in usable],
                   sorted({row['model_version'] for row in usable}), ignored)


def _read_store(store: str) -> tuple[list, int]:
  """(store.labelled_inputs(), the number of labels in it without kept inputs), read without
  creating the store: InputError when it is missing or cannot be read."""
  try:
    url = sa.engine.make_url(store if '://' in store else 'sqlite:///' + os.path.abspath(store))
  except sa.exc.ArgumentError as e:
    raise InputError(f'cannot read the prediction store {store}: {one_line(e)}') from None
  if url.get_backend_name() == 'sqlite' and not os.path.isfile(url.database or ''):
    raise InputError(f'no prediction store at {url.database}: serve the repository with '
                     '--log-inputs 1 and send feedback first, or give --store')
  try:
    opened = PredictionStore(store)
  except (sa.exc.SQLAlchemyError, ImportError, OSError) as e:
    raise InputError(f'cannot read the prediction store {_shown(store)}: {type(e).__name__}: '
                     f'{one_line(e, 160)}') from None
  try:
    rows = opened.labelled_inputs()
    labelled = len(opened.labelled())
  except sa.exc.SQLAlchemyError as e:
    raise InputError(f'cannot read the prediction store {_shown(store)}: {type(e).__name__}: '
                     f'{one_line(e, 160)}') from None
  finally:
    opened.close()
  return rows, labelled - len(rows)


def _held_out(ids, share: float) -> np.ndarray:
  """(N,) bool: whether each prediction id is held out, by a stable hash of the id (the same
  in every process and every run, unlike Python's hash)."""
  return np.array([int.from_bytes(hashlib.sha256(i.encode('utf-8')).digest()[:8], 'big')
                   < share * _HASH_SPAN for i in ids], bool)


def _replay(run: TrainedRun, config, n_feedback: int, args) -> tuple[np.ndarray, np.ndarray]:
  """round(n_feedback * R / (1 - R)) examples (at most all) of the run's own training split,
  drawn with the seed: (images (n, H, W, C) uint8, labels (n,) int32)."""
  count = round(n_feedback * args.replay / (1 - args.replay))
  shape = tuple(run.card['inputs']['shape'])
  if not count:
    return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
  images, labels = task_named(run.card['task']).load_data(config).limited(config).train
  chosen = np.sort(np.random.default_rng(args.seed).choice(len(labels), min(count, len(labels)),
                                                           replace=False))
  return images[chosen].astype(np.uint8), labels[chosen].astype(np.int32)


def _run_config(task, extensions, saved, run_workdir: str, data_dir: str, n_train: int, args):
  """(config, overrides): the champion run's config (fields it lacks at their defaults) with
  the feedback data, init_from the champion run and this command's duration, seed and rate."""
  schema = runner.schema_of(task, extensions)
  config = schema.default_config()
  for key, value in flatten(saved).items():
    try:
      schema.check_key(key)
    except ConfigError:  # A field of an extension this run does not have.
      continue
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    with node.unlocked():
      node[leaf] = value
  batch = config.train.batch_size
  if batch > n_train:  # Whole batches of the (small) feedback set, a multiple of the devices.
    devices = jax.device_count()
    batch = max(devices, n_train // devices * devices)
  overrides = [
      ('data.name', 'feedback'), ('data.source', 'local'),
      ('data.local_dir', os.path.abspath(data_dir)), ('data.fallback', 'none'),
      ('data.num_train', '0'), ('data.num_test', '0'),
      # The held-out feedback measures the run: every training example trains.
      ('data.val_fraction', '0'), ('early_stopping.patience', '0'),
      ('init_from', os.path.abspath(run_workdir)), ('init_from_exclude', ''),
      ('train.num_epochs', str(args.epochs)), ('train.num_steps', '0'),
      ('train.batch_size', str(batch)), ('seed', str(args.seed))]
  if args.learning_rate is not None:
    overrides.append(('optimizer.learning_rate', str(args.learning_rate)))
  return config, schema.apply_overrides(config, overrides)


def _accuracy(logits, inputs, labels, batch_size: int = 1000) -> float:
  predicted = np.concatenate([np.argmax(logits(inputs[i:i + batch_size]), -1)
                              for i in range(0, len(inputs), batch_size)])
  return float(np.mean(predicted == labels))


def _shown(store: str) -> str:
  """A store as it may be printed and recorded: a URL without its password."""
  if '://' not in store:
    return store
  try:
    return sa.engine.make_url(store).render_as_string(hide_password=True)
  except sa.exc.ArgumentError:
    return store


def _names(names) -> str:
  if not names:
    return 'none'
  return ', '.join(map(str, names[:5])) + (f', ... ({len(names)})' if len(names) > 5 else '')


def _say(result: dict, feedback: _Feedback, args) -> None:
  fed, evaluation = result['feedback'], result['evaluation']
  ignored = (f'; {feedback.ignored} of removed versions ignored' if feedback.ignored else '')
  print(f'retrained version {result["champion"]} of {args.repo} on {fed["labels"]} feedback '
        f'labels of versions {", ".join(map(str, fed["versions"]))} ({fed["train"]} trained on, '
        f'{fed["holdout"]} held out{ignored}) and {result["replay"]["examples"]} replayed '
        'training examples')
  for name, title in (('holdout', 'held-out feedback'), ('test', 'original test split')):
    e = evaluation[name]
    print(f'  {title} ({e["examples"]} examples): champion accuracy '
          f'{e["champion_accuracy"]:.4f}, new run {e["candidate_accuracy"]:.4f}')
  print(f'wrote {os.path.join(args.out, REPORT)}; add the new run as a version with: '
        f'jaxmodels export {args.out} --repo {args.repo}')
