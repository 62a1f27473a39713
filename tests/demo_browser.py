"""Drives headless Chromium through the server's demo page: opens URL, uploads IMAGE in the
file input (as a person would) and prints the labels the page shows, most probable first.

  python tests/demo_browser.py http://127.0.0.1:8000/ image.png

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ending in NUL on file descriptors 3 and 4), so nothing but the standard library and
Debian's `chromium` package is needed.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
# Run by a small Python: the pipe ends become descriptors 3 and 4, then chromium replaces it
# (no preexec_fn: the parent may have threads).
MOVE_FDS_AND_EXEC = '''import os, sys
commands, answers = (os.dup(int(fd)) for fd in sys.argv[1:3])
os.dup2(commands, 3)
os.dup2(answers, 4)
os.set_inheritable(3, True)  # dup2 onto itself (a dup may land on 3) keeps close-on-exec.
os.set_inheritable(4, True)
os.execvp(sys.argv[3], sys.argv[3:])'''


class Browser:
  def __init__(self):
    to_child, self._to_browser = os.pipe()
    self._from_browser, from_child = os.pipe()
    self._profile = tempfile.mkdtemp(prefix='chromium-profile-')
    command = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu',
               '--remote-debugging-pipe', f'--user-data-dir={self._profile}', 'about:blank']
    self.process = subprocess.Popen(
        [sys.executable, '-c', MOVE_FDS_AND_EXEC, str(to_child), str(from_child), *command],
        pass_fds=(to_child, from_child), stdout=subprocess.DEVNULL, stderr=None if os.environ.get("DEMO_DEBUG") else subprocess.DEVNULL)
    os.close(to_child)
    os.close(from_child)
    self._next_id, self._buffer = 0, b''

  def send(self, method: str, session: str | None = None, **params) -> dict:
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params}
    if session:
      message['sessionId'] = session
    os.write(self._to_browser, json.dumps(message).encode() + b'\0')
    while True:  # Events are skipped: only the answer to this command matters.
      while b'\0' not in self._buffer:
        chunk = os.read(self._from_browser, 1 << 16)
        if not chunk:
          raise RuntimeError('chromium closed the DevTools pipe')
        self._buffer += chunk
      raw, self._buffer = self._buffer.split(b'\0', 1)
      answer = json.loads(raw)
      if answer.get('id') == self._next_id:
        if 'error' in answer:
          raise RuntimeError(f'{method}: {answer["error"]}')
        return answer['result']

  def close(self) -> None:
    try:
      self.send('Browser.close')
    except (RuntimeError, OSError):
      pass
    try:
      self.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      self.process.kill()
    os.close(self._to_browser)
    os.close(self._from_browser)
    shutil.rmtree(self._profile, ignore_errors=True)


def labels_shown(url: str, image: str, timeout: float = 60) -> list[str]:
  """The labels the demo page at `url` lists after `image` is chosen in its file input."""
  browser = Browser()
  try:
    target = browser.send('Target.createTarget', url=url)['targetId']
    session = browser.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']

    def evaluate(expression: str):
      return browser.send('Runtime.evaluate', session, expression=expression,
                          returnByValue=True)['result'].get('value')

    deadline = time.monotonic() + timeout
    while not loaded(evaluate):
      if time.monotonic() > deadline:
        raise TimeoutError(f'{url} did not load a demo page')
      time.sleep(0.1)
    root = browser.send('DOM.getDocument', session)['root']['nodeId']
    node = browser.send('DOM.querySelector', session, nodeId=root, selector='#file')['nodeId']
    browser.send('DOM.setFileInputFiles', session, nodeId=node, files=[os.path.abspath(image)])
    while (status := evaluate("document.getElementById('status').textContent")) != 'done':
      if status.startswith('error') or time.monotonic() > deadline:
        raise RuntimeError(f'the page shows {status!r}')
      time.sleep(0.1)
    return evaluate("[...document.querySelectorAll('#result li')].map(li => li.dataset.label)")
  finally:
    browser.close()


def loaded(evaluate) -> bool:
  try:  # Until the page exists, there is no context to evaluate in.
    return evaluate("document.readyState === 'complete' && !!document.getElementById('file')")
  except RuntimeError:
    return False


if __name__ == '__main__':
  print('\n'.join(labels_shown(sys.argv[1], sys.argv[2])))
