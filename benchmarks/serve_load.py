"""Load test of `jaxmodels serve` on loopback: N clients send one-image /predict requests for
T seconds (each waits for its answer, then sends the next, over a kept-alive connection).

Three ways, side by side: the server with dynamic batching; the same server handling one
request at a time (--max-batch-size 1); the raw exported function in-process (no HTTP: the
limit), at batch 1 and at the batch size the server batches up to.

  python benchmarks/serve_load.py ARTIFACT_DIR [--clients 16] [--seconds 30] [--json OUT]
  python benchmarks/serve_load.py REPO --rollout [--compare-logging] [--clients 16] ...

--rollout (REPO: a model repository with at least 2 versions, `jaxmodels export RUN --repo
REPO` twice): one server on REPO while the clients send requests for T seconds, each with a
fresh X-Request-Id; the admin routes load the candidate (the newest version that is not the
champion) at 20 % of the run, make it a 20 % canary at 30 %, promote it at 60 % and roll back
at 80 %. Reports requests/s and p50/p99 before, during (load to rollback + 1 s) and after the
swaps, the canary's share, that every answer names one version (header == body), errors and
compilations. The repository's serving state is restored at the end.
--compare-logging: requests/s with the prediction store off (--store off) against recording
with --log-inputs 0.1, back to back, same clients and seconds.

Reports requests/s, p50/p99 latency, errors and XLA compilations after warm-up (from the
server's /metrics). Inputs are Fashion-MNIST test images (Debian's dataset-fashion-mnist IDX
files, or --images FILE.npy).
"""
import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

FASHION_MNIST_TEST = '/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz'


def test_images(path: str | None, count: int = 256) -> np.ndarray:
  if path:
    return np.load(path)[:count]
  from jaxmodels.data.idx import read_idx
  return read_idx(FASHION_MNIST_TEST)[:count, :, :, None]


def start_server(directory: str, *options: str) -> tuple[subprocess.Popen, int]:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  process = subprocess.Popen([sys.executable, '-m', 'jaxmodels.console', 'serve', directory,
                              '--host', '127.0.0.1', '--port', str(port), *options])
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'the server exited with {process.returncode}')
    try:
      if get(port, '/readyz')[0] == 200:
        return process, port
    except OSError:
      time.sleep(0.2)
  process.terminate()
  raise TimeoutError('the server did not become ready in 300 s')


def get(port: int, path: str) -> tuple[int, str]:
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
  try:
    connection.request('GET', path)
    response = connection.getresponse()
    return response.status, response.read().decode()
  finally:
    connection.close()


def metric(port: int, name: str) -> float:
  text = get(port, '/metrics')[1]
  return float(next(line.split()[-1] for line in text.splitlines()
                    if line.startswith(name + ' ')))


class RawClient:
  """A kept-alive HTTP/1.1 connection that sends prepared requests and reads the status and
  the Content-Length body: far less client CPU than http.client, which matters when the
  clients share the server's cores."""

  def __init__(self, port: int):
    self.socket = socket.create_connection(('127.0.0.1', port), timeout=60)
    self.buffer = b''

  def post(self, request: bytes) -> int:
    return self.exchange(request)[0]

  def exchange(self, request: bytes) -> tuple[int, list[bytes], bytes]:
    """(status, header lines, body) of the answer to `request`."""
    self.socket.sendall(request)
    while b'\r\n\r\n' not in self.buffer:
      self._read()
    head, self.buffer = self.buffer.split(b'\r\n\r\n', 1)
    lines = head.split(b'\r\n')
    length = next(int(line.split(b':', 1)[1]) for line in lines[1:]
                  if line.lower().startswith(b'content-length:'))
    while len(self.buffer) < length:
      self._read()
    body, self.buffer = self.buffer[:length], self.buffer[length:]
    return int(lines[0].split()[1]), lines[1:], body

  def _read(self) -> None:
    chunk = self.socket.recv(1 << 16)
    if not chunk:
      raise ConnectionError('the server closed the connection')
    self.buffer += chunk

  def close(self) -> None:
    self.socket.close()


def http_request(body: bytes) -> bytes:
  return (b'POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
          b'Content-Length: %d\r\n\r\n' % len(body)) + body


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
  """Each client sends requests back to back until `seconds` pass."""
  requests = [http_request(body) for body in bodies]
  latencies, errors, lock = [], [0], threading.Lock()
  stop_at = time.monotonic() + seconds

  def client(index: int):
    connection, mine, failed, i = RawClient(port), [], 0, index
    while time.monotonic() < stop_at:
      start = time.perf_counter()
      try:
        ok = connection.post(requests[i % len(requests)]) == 200
      except OSError:
        ok = False
        connection.close()
        connection = RawClient(port)
      if ok:
        mine.append(time.perf_counter() - start)
      else:
        failed += 1
      i += clients
    connection.close()
    with lock:
      latencies.extend(mine)
      errors[0] += failed

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - start
  latencies = np.array(latencies) * 1000
  return {'requests': len(latencies), 'requests_per_s': len(latencies) / elapsed,
          'p50_ms': float(np.percentile(latencies, 50)) if len(latencies) else None,
          'p99_ms': float(np.percentile(latencies, 99)) if len(latencies) else None,
          'errors': errors[0], 'seconds': elapsed}


def serve_and_load(directory: str, bodies, clients: int, seconds: float, *options) -> dict:
  process, port = start_server(directory, *options)
  try:
    load(port, bodies, clients, min(3.0, seconds))  # Warm the HTTP path too.
    result = load(port, bodies, clients, seconds)
    result['compilations_after_warmup'] = metric(port, 'jaxmodels_compilations_after_warmup_total')
    count = metric(port, 'jaxmodels_batch_size_count')
    result['mean_batch_size'] = metric(port, 'jaxmodels_batch_size_sum') / max(count, 1)
  finally:
    process.terminate()
    process.wait(timeout=60)
  return result


def in_process(directory: str, images: np.ndarray, batch_size: int, seconds: float) -> dict:
  """The exported function called in a loop on fixed batches (no HTTP, no JSON)."""
  sys.path.insert(0, directory)
  import artifact
  model = artifact.Artifact(directory)
  fn = model.compile(batch_size)
  batch = np.resize(images.astype(np.float32), (batch_size, *images.shape[1:]))
  fn(batch)
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn(batch)
    calls += 1
  elapsed = time.perf_counter() - start
  return {'batch_size': batch_size, 'examples_per_s': calls * batch_size / elapsed,
          'ms_per_call': 1000 * elapsed / calls}


# The swaps of --rollout, at these fractions of the run.
SWAPS = (('load', 0.2), ('canary', 0.3), ('promote', 0.6), ('rollback', 0.8))
CANARY_PERCENT = 20
SETTLE_S = 1.0  # "during" lasts until this long after the rollback is answered


def admin(port: int, token: str, path: str, body: dict | None = None) -> tuple[int, str]:
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=600)
  try:
    connection.request('POST', path, body=None if body is None else json.dumps(body),
                       headers={'Authorization': f'Bearer {token}',
                                'Content-Type': 'application/json'})
    response = connection.getresponse()
    return response.status, response.read().decode()
  finally:
    connection.close()


def answered_versions(headers: list[bytes], body: bytes) -> tuple[int | None, int | None]:
  """(X-Model-Version, the body's model_version); None where missing or given twice."""
  named = [line.split(b':', 1)[1] for line in headers
           if line.lower().startswith(b'x-model-version:')]
  header = int(named[0]) if len(named) == 1 else None
  at = body.find(b'"model_version":')
  if at < 0 or body.count(b'"model_version"') != 1:
    return header, None
  return header, int(body[at + 16:].split(b'}', 1)[0].split(b',', 1)[0])


def percentiles(latencies: list[float]) -> dict:
  ms = np.array(latencies) * 1000
  return {'p50_ms': float(np.percentile(ms, 50)) if len(ms) else None,
          'p99_ms': float(np.percentile(ms, 99)) if len(ms) else None}


@contextlib.contextmanager
def serving_state_kept(directory: str):
  """The repository's serving.json as it was (or absent) after the block: the servers this
  benchmark starts pin their state and change it."""
  state_file = os.path.join(directory, 'serving.json')
  saved = open(state_file, 'rb').read() if os.path.exists(state_file) else None
  try:
    yield
  finally:
    if saved is None:
      if os.path.exists(state_file):
        os.remove(state_file)
    else:
      with open(state_file, 'wb') as f:
        f.write(saved)


def rollout(directory: str, bodies: list[bytes], clients: int, seconds: float,
            *options: str) -> dict:
  """One server on the repository; clients send requests (a fresh X-Request-Id each) while the
  admin routes load, canary, promote and roll back the candidate at fixed times."""
  from jaxmodels.serve.model_repository import ModelRepository
  repo = ModelRepository(directory)
  versions = repo.versions()
  if len(versions) < 2:
    raise SystemExit(f'--rollout needs a repository with at least 2 versions; {directory} has '
                     f'{len(versions)}: add one with `jaxmodels export RUN --repo {directory}`')
  state = repo.state()
  champion = state.champion
  candidate = max(v for v in versions if v != champion)
  token_dir = tempfile.mkdtemp()
  token = uuid.uuid4().hex
  with open(os.path.join(token_dir, 'token'), 'w', encoding='utf-8') as f:
    f.write(token)
  process, port = start_server(directory, '--admin-token-file',
                               os.path.join(token_dir, 'token'), *options)
  try:
    load(port, bodies, clients, min(3.0, seconds))  # Warm the HTTP path too.
    compiles_before = metric(port, 'jaxmodels_compilations_after_warmup_total')
    result = drive_rollout(port, token, bodies, clients, seconds, candidate)
    result['compilations_after_warmup'] = {
        'before': compiles_before,
        'after': metric(port, 'jaxmodels_compilations_after_warmup_total')}
  finally:
    process.terminate()
    process.wait(timeout=60)
  result.update(champion=champion, candidate=candidate)
  return result


def drive_rollout(port: int, token: str, bodies: list[bytes], clients: int, seconds: float,
                  candidate: int) -> dict:
  heads = [b'POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
           b'Content-Length: %d\r\nX-Request-Id: ' % len(body) for body in bodies]
  records, lock = [], threading.Lock()  # (sent, seconds, status, header, body version)
  start = time.perf_counter()
  stop_at = start + seconds

  def client(index: int):
    connection, mine, i = RawClient(port), [], index
    while time.perf_counter() < stop_at:
      request = heads[i % len(heads)] + uuid.uuid4().hex.encode() + b'\r\n\r\n' + bodies[
          i % len(bodies)]
      sent = time.perf_counter()
      try:
        status, headers, body = connection.exchange(request)
        header, version = answered_versions(headers, body) if status == 200 else (None, None)
      except (OSError, ValueError):
        status, header, version = None, None, None
        connection.close()
        connection = RawClient(port)
      mine.append((sent - start, time.perf_counter() - sent, status, header, version))
      i += clients
    connection.close()
    with lock:
      records.extend(mine)

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for thread in threads:
    thread.start()
  swaps = {}
  for name, fraction in SWAPS:
    time.sleep(max(0.0, start + fraction * seconds - time.perf_counter()))
    begun = time.perf_counter() - start
    path = '/v1/rollback' if name == 'rollback' else f'/v1/versions/{candidate}/{name}'
    status, text = admin(port, token, path,
                         {'percent': CANARY_PERCENT} if name == 'canary' else None)
    swaps[name] = {'start_s': begun, 'end_s': time.perf_counter() - start, 'status': status}
    if status != 200:
      swaps[name]['error'] = text[:300]
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - start
  during_from = swaps['load']['start_s']
  during_to = min(elapsed, swaps['rollback']['end_s'] + SETTLE_S)
  phases = {'before': (0.0, during_from), 'during': (during_from, during_to),
            'after': (during_to, elapsed)}
  result = {'swaps': swaps, 'seconds': elapsed, 'phases': {}}
  for name, (begin, end) in phases.items():
    ok = [r[1] for r in records if begin <= r[0] < end and r[2] == 200]
    result['phases'][name] = {'from_s': begin, 'to_s': end, 'requests': len(ok),
                              'requests_per_s': len(ok) / max(end - begin, 1e-9),
                              **percentiles(ok)}
  answered = [r for r in records if r[2] == 200]
  result['requests'] = len(answered)
  result['requests_per_s'] = len(answered) / elapsed
  result['errors'] = len(records) - len(answered)
  result['one_version_answers'] = sum(1 for r in answered if r[3] is not None and r[3] == r[4])
  result['versions_answered'] = {str(v): sum(1 for r in answered if r[4] == v)
                                 for v in sorted({r[4] for r in answered}, key=str)}
  canary = [r for r in answered
            if swaps['canary']['end_s'] <= r[0] < swaps['promote']['start_s']]
  result['canary_phase_requests'] = len(canary)
  result['canary_share_percent'] = (100 * sum(1 for r in canary if r[4] == candidate)
                                    / len(canary) if canary else None)
  before, during = result['phases']['before']['p99_ms'], result['phases']['during']['p99_ms']
  result['p99_during_over_before'] = during / before if before and during else None
  return result


def print_rollout(r: dict, clients: int) -> None:
  print(f'rollout: champion v{r["champion"]}, candidate v{r["candidate"]}, {clients} clients, '
        f'{r["seconds"]:.1f} s, {r["requests_per_s"]:.1f} req/s overall')
  print('  swaps (s from the start, begun -> answered): ' + ', '.join(
      f'{name} {s["start_s"]:.1f} -> {s["end_s"]:.1f}'
      + ('' if s['status'] == 200 else f' (HTTP {s["status"]}: {s.get("error")})')
      for name, s in r['swaps'].items()))
  for name, p in r['phases'].items():
    print(f'  {name:6s} ({p["from_s"]:5.1f}-{p["to_s"]:5.1f} s) {p["requests_per_s"]:8.1f} req/s  '
          f'p50 {p["p50_ms"] or float("nan"):7.1f} ms  p99 {p["p99_ms"] or float("nan"):7.1f} ms'
          f'  ({p["requests"]} requests)')
  compiles = r['compilations_after_warmup']
  print(f'  errors {r["errors"]}  compilations after warm-up {compiles["before"]:g} -> '
        f'{compiles["after"]:g}  answers naming one version (header == body) '
        f'{r["one_version_answers"]}/{r["requests"]}  by version {r["versions_answered"]}')
  share = r['canary_share_percent']
  print(f'  canary share {"-" if share is None else f"{share:.1f}"} % of '
        f'{r["canary_phase_requests"]} requests in the canary phase (set: {CANARY_PERCENT} %)')
  ratio = r['p99_during_over_before']
  print(f'  p99 during / before: {"-" if ratio is None else f"{ratio:.2f}"}x')


def compare_logging(directory: str, bodies, clients: int, seconds: float, *options) -> dict:
  """requests/s with the prediction store off, then recording with --log-inputs 0.1."""
  on = ['--log-inputs', '0.1']
  from jaxmodels.serve.model_repository import ModelRepository
  if ModelRepository.is_single_artifact(directory):  # No store by default: give one.
    on += ['--store', os.path.join(tempfile.mkdtemp(), 'monitor.db')]
  result = {'off': serve_and_load(directory, bodies, clients, seconds, '--store', 'off',
                                  *options),
            'on': serve_and_load(directory, bodies, clients, seconds, *on, *options)}
  result['on_over_off'] = result['on']['requests_per_s'] / result['off']['requests_per_s']
  return result


def print_load(name: str, r: dict) -> None:
  print(f'{name:14s} {r["requests_per_s"]:8.1f} req/s  p50 {r["p50_ms"]:7.1f} ms  p99 '
        f'{r["p99_ms"]:7.1f} ms  errors {r["errors"]}  compilations after warm-up '
        f'{r["compilations_after_warmup"]:g}  mean batch {r["mean_batch_size"]:.1f}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('artifact', help='an exported model (jaxmodels export --out DIR)')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=30.0)
  parser.add_argument('--max-batch-size', type=int, default=64)
  parser.add_argument('--max-wait-ms', type=float, default=5.0)
  parser.add_argument('--images', default=None, help='a .npy of test images (N, H, W, C)')
  parser.add_argument('--json', default=None, help='also write the results here')
  parser.add_argument('--rollout', action='store_true',
                      help='ARTIFACT is a repository of 2+ versions: load, canary, promote and '
                           'roll back one under load')
  parser.add_argument('--compare-logging', action='store_true',
                      help='requests/s with the prediction store off and with --log-inputs 0.1')
  args = parser.parse_args()
  images = test_images(args.images)
  # A grayscale image as rows of pixels (H, W), the way a client writes one.
  pixels = images[..., 0] if images.shape[-1] == 1 else images
  bodies = [json.dumps({'inputs': image.tolist(), 'top_k': 3}).encode() for image in pixels]
  results = {'clients': args.clients, 'seconds': args.seconds, 'cpu': cpu_model()}
  print(f'cpu: {results["cpu"]}')
  batching = ('--max-batch-size', str(args.max_batch_size), '--max-wait-ms', str(args.max_wait_ms))
  if args.rollout or args.compare_logging:
    with serving_state_kept(args.artifact):
      if args.rollout:
        results['rollout'] = rollout(args.artifact, bodies, args.clients, args.seconds,
                                     *batching)
        print_rollout(results['rollout'], args.clients)
      if args.compare_logging:
        results['logging'] = compare_logging(args.artifact, bodies, args.clients, args.seconds,
                                             *batching)
      print_load('logging off', results['logging']['off'])
      print_load('logging on', results['logging']['on'])
      print(f'logging on (--log-inputs 0.1) / off (--store off): '
            f'{results["logging"]["on_over_off"]:.2f}x requests/s')
    if args.json:
      with open(args.json, 'w', encoding='utf-8') as f:
        json.dump(results, f, indent=2)
    return
  results['batching'] = serve_and_load(args.artifact, bodies, args.clients, args.seconds,
                                       *batching)
  results['one_at_a_time'] = serve_and_load(args.artifact, bodies, args.clients, args.seconds,
                                            '--max-batch-size', '1')
  results['in_process'] = [in_process(args.artifact, images, b, min(10.0, args.seconds))
                           for b in (1, args.max_batch_size)]
  results['speedup'] = (results['batching']['requests_per_s']
                        / results['one_at_a_time']['requests_per_s'])
  for name in ('batching', 'one_at_a_time'):
    print_load(name, results[name])
  for r in results['in_process']:
    print(f'in-process b={r["batch_size"]:<4d} {r["examples_per_s"]:8.1f} examples/s '
          f'({r["ms_per_call"]:.2f} ms a call)')
  single, batched = results['in_process']
  results['in_process_gain'] = batched['examples_per_s'] / single['examples_per_s']
  print(f'batching / one at a time: {results["speedup"]:.1f}x  (in-process, batch '
        f'{batched["batch_size"]} / batch 1: {results["in_process_gain"]:.1f}x, what batching '
        'could give if HTTP cost nothing)')
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(results, f, indent=2)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    name = 'unknown'
  return f'{name} ({os.cpu_count()} cores)'


if __name__ == '__main__':
  main()
