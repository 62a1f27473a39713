"""Load test of `jaxmodels serve` on loopback: N clients send one-image /predict requests for
T seconds (each waits for its answer, then sends the next, over a kept-alive connection).

Three ways, side by side: the server with dynamic batching; the same server handling one
request at a time (--max-batch-size 1); the raw exported function in-process (no HTTP: the
limit), at batch 1 and at the batch size the server batches up to.

  python benchmarks/serve_load.py ARTIFACT_DIR [--clients 16] [--seconds 30] [--json OUT]

Reports requests/s, p50/p99 latency, errors and XLA compilations after warm-up (from the
server's /metrics). Inputs are Fashion-MNIST test images (Debian's dataset-fashion-mnist IDX
files, or --images FILE.npy).
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

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
    self.socket.sendall(request)
    while b'\r\n\r\n' not in self.buffer:
      self._read()
    head, self.buffer = self.buffer.split(b'\r\n\r\n', 1)
    lines = head.split(b'\r\n')
    length = next(int(line.split(b':', 1)[1]) for line in lines[1:]
                  if line.lower().startswith(b'content-length:'))
    while len(self.buffer) < length:
      self._read()
    self.buffer = self.buffer[length:]
    return int(lines[0].split()[1])

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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('artifact', help='an exported model (jaxmodels export --out DIR)')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=30.0)
  parser.add_argument('--max-batch-size', type=int, default=64)
  parser.add_argument('--max-wait-ms', type=float, default=5.0)
  parser.add_argument('--images', default=None, help='a .npy of test images (N, H, W, C)')
  parser.add_argument('--json', default=None, help='also write the results here')
  args = parser.parse_args()
  images = test_images(args.images)
  # A grayscale image as rows of pixels (H, W), the way a client writes one.
  pixels = images[..., 0] if images.shape[-1] == 1 else images
  bodies = [json.dumps({'inputs': image.tolist(), 'top_k': 3}).encode() for image in pixels]
  results = {'clients': args.clients, 'seconds': args.seconds, 'cpu': cpu_model()}
  results['batching'] = serve_and_load(
      args.artifact, bodies, args.clients, args.seconds, '--max-batch-size',
      str(args.max_batch_size), '--max-wait-ms', str(args.max_wait_ms))
  results['one_at_a_time'] = serve_and_load(args.artifact, bodies, args.clients, args.seconds,
                                            '--max-batch-size', '1')
  results['in_process'] = [in_process(args.artifact, images, b, min(10.0, args.seconds))
                           for b in (1, args.max_batch_size)]
  results['speedup'] = (results['batching']['requests_per_s']
                        / results['one_at_a_time']['requests_per_s'])
  for name in ('batching', 'one_at_a_time'):
    r = results[name]
    print(f'{name:14s} {r["requests_per_s"]:8.1f} req/s  p50 {r["p50_ms"]:7.1f} ms  p99 '
          f'{r["p99_ms"]:7.1f} ms  errors {r["errors"]}  compilations after warm-up '
          f'{r["compilations_after_warmup"]:g}  mean batch {r["mean_batch_size"]:.1f}')
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
