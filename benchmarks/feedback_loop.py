"""The loop after deployment, end to end on Fashion-MNIST: serve, watch, learn from the
corrections, and roll the better version out through the promotion gate.

  python benchmarks/feedback_loop.py [--workdir DIR] [--window 200] [--quick] [--json OUT]

1. Trains a CNN (`experiments/fashion_mnist.py`), exports it into a model repository and
   serves it (`jaxmodels serve REPO --log-inputs 1`), as a user would, in subprocesses.
2. Streams in-distribution traffic (the test split, >= 40 windows) and counts the windows
   that /v1/monitor flags as drifted: the false alarms.
3. Streams three shifts of training images the model saw unshifted: lower contrast with
   noise, a 90 degree rotation, and one class (Trouser) whose images come inverted, white on
   black turned black on white. For each, the window in which /v1/monitor first flags drift.
4. Sends the true labels of part of the shifted stream as feedback (/v1/feedback), retrains
   from it with and without replay of the original training data (`jaxmodels retrain`),
   exports the replay run as version 2, and under a load test (16 clients) loads it, makes
   it a 20 % canary, promotes it through the gate and rolls back once.

Prints every figure: the window size, false alarms, detection per shift with its p-values,
feedback labels used, held-out and test accuracies of the champion and both retrained runs,
the gate's answers, and the rollout's requests, errors and compilations after warm-up.
--quick runs the same steps at reduced sizes (the slow test step runs it).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_load  # noqa: E402 - the load test's server start and rollout driver.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TROUSER = 1
SHIFTS = ('low contrast + noise', 'rotated 90 degrees', 'Trouser inverted')


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def load_fashion_mnist(directory: str):
  from jaxmodels.data.idx import read_idx
  read = lambda name: read_idx(os.path.join(directory, name))
  return ((read('train-images-idx3-ubyte.gz')[..., None], read('train-labels-idx1-ubyte.gz')),
          (read('t10k-images-idx3-ubyte.gz')[..., None], read('t10k-labels-idx1-ubyte.gz')))


def shifted(kind: str, images: np.ndarray, labels: np.ndarray, rng) -> np.ndarray:
  """uint8 images (N, 28, 28, 1) as the shift `kind` shows them."""
  x = images.astype(np.float32)
  if kind == SHIFTS[0]:
    x = 0.35 * x + 90 + rng.normal(0, 20, x.shape)
  elif kind == SHIFTS[1]:
    x = np.rot90(x, 1, axes=(1, 2))
  else:
    x = np.where((labels == TROUSER)[:, None, None, None], 255 - x, x)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def run(command: list[str], **kwargs) -> str:
  """Runs a command of the README (python -m jaxmodels.console ... or an experiment); its
  output, or SystemExit with it when it fails."""
  started = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
  if done.returncode != 0:
    raise SystemExit(f'{" ".join(command)} failed ({done.returncode}):\n{done.stdout}\n'
                     f'{done.stderr}')
  print(f'  ({" ".join(os.path.basename(c) if c == sys.executable else c for c in command)}: '
        f'{time.perf_counter() - started:.0f} s)', flush=True)
  return done.stdout


def call(port: int, path: str, body=None, token: str | None = None) -> tuple[int, dict]:
  headers = {'Content-Type': 'application/json'}
  if token:
    headers['Authorization'] = f'Bearer {token}'
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(f'http://127.0.0.1:{port}{path}', data=data, headers=headers,
                                   method='GET' if body is None else 'POST')
  try:
    with urllib.request.urlopen(request, timeout=600) as answer:
      return answer.status, json.loads(answer.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def stream(port: int, images: np.ndarray, per_request: int = 50) -> list[str]:
  """Sends the images in order as /predict requests; the prediction ids, in order."""
  ids = []
  for start in range(0, len(images), per_request):
    status, answer = call(port, '/predict',
                          {'inputs': images[start:start + per_request].tolist(), 'top_k': 1})
    if status != 200:
      raise SystemExit(f'/predict answered {status}: {answer}')
    ids += answer['prediction_ids']
  return ids


def monitor(port: int, version: int = 1) -> dict:
  time.sleep(2.5)  # The store commits within 50 ms; the server keeps a snapshot for 2 s.
  status, document = call(port, '/v1/monitor')
  if status != 200:
    raise SystemExit(f'/v1/monitor answered {status}: {document}')
  return next(v for v in document['versions'] if v['version'] == version)


def retrain(repo: str, out: str, replay: float, epochs: float, learning_rate: float) -> dict:
  run([sys.executable, '-m', 'jaxmodels.console', 'retrain', repo, '--out', out,
       '--replay', str(replay), '--epochs', str(epochs), '--learning-rate', str(learning_rate)])
  with open(os.path.join(out, 'retrain.json'), encoding='utf-8') as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=None, help='where runs and the repository go '
                      '(default: a new temporary directory)')
  parser.add_argument('--window', type=int, default=200, help='predictions per drift window')
  parser.add_argument('--windows', type=int, default=42,
                      help='in-distribution windows streamed (>= 40 for the false-alarm rate)')
  parser.add_argument('--shift-windows', type=int, default=10,
                      help='windows streamed per shift (their labels are the feedback)')
  parser.add_argument('--label-fraction', type=float, default=0.5,
                      help='share of the shifted predictions sent back as feedback')
  parser.add_argument('--epochs', type=float, default=3, help="the champion's training epochs")
  parser.add_argument('--retrain-epochs', type=float, default=5)
  parser.add_argument('--replay', type=float, default=0.8,
                      help="share of the retraining set replayed from the run's training data")
  parser.add_argument('--retrain-learning-rate', type=float, default=1e-3,
                      help="a third of the champion's: it is a fine-tune")
  parser.add_argument('--clients', type=int, default=16, help='load-test clients')
  parser.add_argument('--seconds', type=float, default=20.0, help='load-test seconds')
  parser.add_argument('--quick', action='store_true',
                      help='reduced sizes: the SmallCNN on 12,000 images for 1 epoch, 40 '
                           'windows, 6 per shift, a shorter load test')
  parser.add_argument('--json', default=None, help='also write the figures here')
  args = parser.parse_args()
  champion_options = []
  if args.quick:
    args.windows, args.shift_windows = 40, 6
    args.epochs, args.retrain_epochs, args.seconds = 1, 3, 8.0
    champion_options = ['--config=experiments/configs/fashion_mnist.py:fast',
                        '--config.data.num_train=12000']
  from jaxmodels.data.local import find_local_dir
  data_dir = find_local_dir('fashion_mnist')
  if data_dir is None:
    raise SystemExit('no Fashion-MNIST files here: apt-get install dataset-fashion-mnist')
  work = args.workdir or tempfile.mkdtemp(prefix='feedback-loop-')
  os.makedirs(work, exist_ok=True)
  champion_run, repo = os.path.join(work, 'champion'), os.path.join(work, 'repo')
  figures = {'cpu': cpu_model(), 'window': args.window, 'workdir': work}
  print(f'feedback loop on {figures["cpu"]}, in {work}', flush=True)
  rng = np.random.default_rng(0)
  (train_images, train_labels), (test_images, _) = load_fashion_mnist(data_dir)

  print('1. train the champion, export it, serve it', flush=True)
  if not os.path.isfile(os.path.join(champion_run, 'model.json')):
    run([sys.executable, 'experiments/fashion_mnist.py', *champion_options,
         f'--workdir={champion_run}', f'--config.train.num_epochs={args.epochs}',
         '--config.train.progress=False'])
  for old in (repo, os.path.join(work, 'retrained'), os.path.join(work, 'retrained-no-replay')):
    shutil.rmtree(old, ignore_errors=True)  # A rerun reuses only the champion's run.
  run([sys.executable, '-m', 'jaxmodels.console', 'export', champion_run, '--repo', repo,
       '--platforms', 'cpu'])
  token = uuid.uuid4().hex
  with open(os.path.join(work, 'token'), 'w', encoding='utf-8') as f:
    f.write(token)
  server, port = serve_load.start_server(
      repo, '--log-inputs', '1', '--monitor-window', str(args.window), '--admin-token-file',
      os.path.join(work, 'token'))
  try:
    print(f'2. {args.windows} in-distribution windows of {args.window}', flush=True)
    order = rng.permutation(len(test_images))[:args.windows * args.window]
    stream(port, test_images[order])
    history = monitor(port)['drift']['history'][-args.windows:]
    alarms = sum(w['drifted'] for w in history)
    figures['false_alarms'] = {'windows': len(history), 'flagged': alarms,
                               'rate': alarms / len(history)}
    print(f'   false alarms: {alarms} of {len(history)} windows ({100 * alarms / len(history):.1f} '
          '%)', flush=True)

    print('3. three shifts', flush=True)
    pool = rng.permutation(len(train_images))
    per_shift = args.shift_windows * args.window
    feedback, figures['shifts'] = [], {}
    for i, kind in enumerate(SHIFTS):
      chosen = pool[i * per_shift:(i + 1) * per_shift]
      images, labels = shifted(kind, train_images[chosen], train_labels[chosen], rng), \
          train_labels[chosen]
      first = stream(port, images[:2 * args.window])
      windows = monitor(port)['drift']['history'][-2:]
      flagged = [w['drifted'] for w in windows]
      detected = flagged.index(True) + 1 if True in flagged else None
      rest = stream(port, images[2 * args.window:])
      figures['shifts'][kind] = {
          'detected_in_window': detected,
          'p_values': [{t['name']: t['p_value'] for t in w['tests']} for w in windows]}
      print(f'   {kind}: flagged in window {detected} of 2' if detected else
            f'   {kind}: NOT flagged within 2 windows', flush=True)
      for w in windows:
        smallest = sorted(w['tests'], key=lambda t: t['p_value'])[:3]
        print('     ' + ', '.join(f'{t["name"]} p={t["p_value"]:.2e}' for t in smallest))
      labelled = rng.random(len(labels)) < args.label_fraction
      feedback += [{'prediction_id': p, 'label': int(y)}
                   for p, y, keep in zip(first + rest, labels, labelled) if keep]
    for start in range(0, len(feedback), 1000):
      status, answer = call(port, '/v1/feedback', {'feedback': feedback[start:start + 1000]})
      if status != 200:
        raise SystemExit(f'/v1/feedback answered {status}: {answer}')
    quality = monitor(port)['quality']
    figures['feedback'] = {'labels_sent': len(feedback), 'live_accuracy': quality['accuracy'],
                           'interval': quality['accuracy_interval']}
    print(f'   feedback: {len(feedback)} labels; live accuracy of v1 on them '
          f'{quality["accuracy"]:.4f} (95 % Wilson {quality["accuracy_interval"][0]:.4f}-'
          f'{quality["accuracy_interval"][1]:.4f})', flush=True)

    print('4. retrain from the feedback, with and without replay', flush=True)
    with_replay = retrain(repo, os.path.join(work, 'retrained'), args.replay,
                          args.retrain_epochs, args.retrain_learning_rate)
    no_replay = retrain(repo, os.path.join(work, 'retrained-no-replay'), 0.0,
                        args.retrain_epochs, args.retrain_learning_rate)
    figures['retrain'] = {}
    for name, record in ((f'replay {args.replay:g}', with_replay), ('no replay', no_replay)):
      holdout, test = record['evaluation']['holdout'], record['evaluation']['test']
      figures['retrain'][name] = {
          'labels_used': record['feedback']['train'], 'replayed': record['replay']['examples'],
          'holdout_examples': holdout['examples'],
          'holdout': [holdout['champion_accuracy'], holdout['candidate_accuracy']],
          'test': [test['champion_accuracy'], test['candidate_accuracy']]}
      print(f'   {name}: {record["feedback"]["train"]} feedback labels + '
            f'{record["replay"]["examples"]} replayed; held-out shifted ({holdout["examples"]}): '
            f'{100 * holdout["champion_accuracy"]:.2f} -> {100 * holdout["candidate_accuracy"]:.2f}'
            f' %; test: {100 * test["champion_accuracy"]:.2f} -> '
            f'{100 * test["candidate_accuracy"]:.2f} %', flush=True)

    print('5. export, canary, promote through the gate, roll back (under load)', flush=True)
    run([sys.executable, '-m', 'jaxmodels.console', 'export', os.path.join(work, 'retrained'),
         '--repo', repo, '--platforms', 'cpu'])
    bodies = [json.dumps({'inputs': image.tolist()}).encode() for image in test_images[:256]]
    serve_load.load(port, bodies, args.clients, min(3.0, args.seconds))  # Warm the HTTP path.
    compiles = serve_load.metric(port, 'jaxmodels_compilations_after_warmup_total')
    rollout = serve_load.drive_rollout(port, token, bodies, args.clients, args.seconds, 2)
    rollout['compilations_after_warmup'] = serve_load.metric(
        port, 'jaxmodels_compilations_after_warmup_total') - compiles
    figures['rollout'] = rollout
    print(f'   rollout of v2: swaps {({k: v["status"] for k, v in rollout["swaps"].items()})}, '
          f'{rollout["requests"]} requests, {rollout["errors"]} errors, '
          f'{rollout["compilations_after_warmup"]:.0f} compilations after warm-up (the loads '
          'compile before serving)', flush=True)
    promote = rollout['swaps']['promote']
    if promote['status'] != 200:
      print(f'   the gate refused v2: {promote.get("error")}')
  finally:
    server.terminate()
    server.wait(timeout=60)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(figures, f, indent=2, default=float)
  print(json.dumps({k: v for k, v in figures.items() if k != 'rollout'}, indent=1, default=float))


if __name__ == '__main__':
  main()
