"""`jaxmodels serve` in a subprocess on a free loopback port, for the tests and benchmarks."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Server:
  """Starts the server on `directory` (an exported model or a model repository) with extra
  command-line `options` (`--store URL`, `--admin-token-file FILE`, ...); `url`, `request`."""

  def __init__(self, directory: str, *options: str, timeout: float = 120):
    self.port = free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    env = {**os.environ, 'XLA_FLAGS': ''}  # One CPU device, as a deployment has.
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'jaxmodels.console', 'serve', directory, '--port',
         str(self.port), *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
      if self.process.poll() is not None:
        raise RuntimeError(f'the server exited: {self.process.stdout.read().decode()[-3000:]}')
      try:
        if self.request('GET', '/readyz')[0] == 200:
          return
      except OSError:
        pass
      if time.monotonic() > deadline:
        self.stop()
        raise TimeoutError('the server did not become ready')
      time.sleep(0.2)

  def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, parsed JSON or text). `body`: bytes as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={'Content-Type': 'application/json',
                                              **(headers or {})})
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
      status, text = e.code, e.read().decode()
    try:
      return status, json.loads(text)
    except json.JSONDecodeError:
      return status, text

  def metric(self, name: str) -> float:
    text = self.request('GET', '/metrics')[1]
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith(name + ' ')))

  def kill(self) -> int:
    """SIGKILL: no shutdown, nothing flushed."""
    self.process.kill()
    return self.process.wait(timeout=60)

  def stop(self) -> int:
    if self.process.poll() is None:
      self.process.terminate()
    return self.process.wait(timeout=60)
