"""Dynamic batching: concurrent requests' examples are gathered into one batch (up to
`max_batch_size` examples, waiting at most `max_wait_ms` after the first), padded to the
smallest compiled bucket that holds them and run on one thread. Every bucket is compiled
before the first request, so serving never compiles."""
import collections
import concurrent.futures
import queue
import threading
import time

import numpy as np


def buckets_up_to(max_batch_size: int) -> tuple[int, ...]:
  """1, 2, 4, ... and max_batch_size itself: padding wastes less than half a batch."""
  sizes, size = [], 1
  while size < max_batch_size:
    sizes.append(size)
    size *= 2
  return (*sizes, max_batch_size)


class Batcher:
  """`submit(examples (n, ...))` -> a Future of the logits (n, C). `functions` maps each bucket
  (batch size) to its compiled fn((bucket, ...) -> (bucket, C)); `observe(batch_size)` is
  told the real size of each batch run (metrics)."""

  def __init__(self, functions: dict, max_wait_ms: float, observe=lambda size: None):
    self.functions, self.buckets = functions, sorted(functions)
    self.max_batch_size, self.max_wait = self.buckets[-1], max_wait_ms / 1000
    self.observe = observe
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)
    self._thread.start()

  def submit(self, examples: np.ndarray) -> concurrent.futures.Future:
    if not 0 < len(examples) <= self.max_batch_size:
      raise ValueError(f'a request holds 1 to {self.max_batch_size} examples')
    future = concurrent.futures.Future()
    self._queue.put((examples, future))
    return future

  def close(self) -> None:
    """Runs what was submitted, then stops the thread."""
    self._queue.put(None)
    self._thread.join()

  def _loop(self) -> None:
    waiting = collections.deque()
    while True:
      item = waiting.popleft() if waiting else self._queue.get()
      if item is None:
        return
      batch, size = [item], len(item[0])
      deadline = time.monotonic() + self.max_wait
      while size < self.max_batch_size:
        try:
          item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if item is None or size + len(item[0]) > self.max_batch_size:
          waiting.append(item)  # The next batch starts with it (or stops after this one).
          break
        batch.append(item)
        size += len(item[0])
      self._run(batch, size)

  def _run(self, batch: list, size: int) -> None:
    bucket = next(b for b in self.buckets if b >= size)
    examples = np.concatenate([examples for examples, _ in batch])
    padded = np.concatenate([examples, np.zeros((bucket - size, *examples.shape[1:]),
                                                examples.dtype)])
    try:
      logits = self.functions[bucket](padded)[:size]
    except Exception as e:  # The requests get the error; the server goes on.
      for _, future in batch:
        future.set_exception(e)
      return
    self.observe(size)
    start = 0
    for examples, future in batch:
      future.set_result(logits[start:start + len(examples)])
      start += len(examples)
