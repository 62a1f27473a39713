"""Continuous batching of a language-model artifact (`lm_artifact.LMArtifact`), JetStream
style: one thread owns the KV cache of S slots and loops

  1. admit waiting requests into free slots: prefill each prompt into its slot (its first token);
  2. one decode step for all S slots at once (idle slots ride along and are ignored);
  3. hand each active slot's new text to its request: one `call_soon_threadsafe` per step
     for all of them, onto the event loop that waits for them.

A request finishes on max_tokens, on the end-of-sequence token, on a stop string (not
returned, as OpenAI does), at the end of the context, or when cancelled (its client went
away); its slot is free for the next waiting request at the next step. Requests beyond the
free slots wait in a bounded queue (`QueueFull` past it). The text streams out as it becomes
final: never half a UTF-8 character, never the start of what may turn out to be a stop string.

    engine = Engine(model, max_queue=64)
    engine.start()
    generation = Generation(prompt_ids, max_tokens=64, temperature=0.0)
    engine.submit(generation)                  # on the event loop
    async for text in generation.deltas(): ...
    generation.finish_reason                   # 'stop' | 'length' | 'error'
"""
import asyncio
import codecs
import collections
import dataclasses
import logging
import threading
import time

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
  """Every slot is busy and the waiting queue is full."""


class TextStream:
  """Token bytes in, text out once it is final: an incomplete UTF-8 sequence waits for its
  next bytes, and a tail that could start a stop string waits until it cannot (or the
  generation ends). `text` is everything final so far; a stop string cuts it and is dropped."""

  def __init__(self, stop: tuple[str, ...] = ()):
    self.stop, self.text, self.sent, self.stopped = stop, '', 0, False
    self._longest = max(map(len, stop), default=0)
    self._decoder = codecs.getincrementaldecoder('utf-8')('replace')

  def add(self, data: bytes, final: bool = False) -> str:
    """The text that became final with `data` (b'' and final=True at the end: the rest)."""
    new = self._decoder.decode(data, final)
    if new:
      # A stop string not in the old text ends in the new: it starts at most here.
      start = max(0, len(self.text) - self._longest + 1)
      self.text += new
      hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
      if hits:
        self.text, self.stopped = self.text[:min(hits)], True
        final = True
    end = len(self.text) if final else len(self.text) - self._held()
    out, self.sent = self.text[self.sent:end], max(self.sent, end)
    return out

  def _held(self) -> int:
    """The longest tail of the text that is the start of a stop string."""
    held = 0
    for s in self.stop:
      for k in range(min(len(s) - 1, len(self.text)), held, -1):
        if self.text.endswith(s[:k]):
          held = k
          break
    return held


@dataclasses.dataclass(eq=False)
class Generation:
  """One request. The engine thread writes `tokens`, the text stream and the timings; the
  event loop reads what was handed over (`deltas`, `finish_reason`) and may set `cancelled`.

  prompt: token ids (P,); max_tokens: None generates to the end of the context; temperature
  0 is greedy; top_k 0 keeps every token; seed: the sampling key of the n-th new token is
  fold_in(key(seed), n), whatever else runs beside it."""
  prompt: list[int]
  max_tokens: int | None = 16
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple[str, ...] = ()
  # The engine thread's side.
  tokens: list[int] = dataclasses.field(default_factory=list)
  arrival: float = dataclasses.field(default_factory=time.perf_counter)
  last_token_at: float = 0.0
  cancelled: bool = False
  # The event loop's side: what has been handed over.
  finish_reason: str | None = None
  error: str | None = None
  chunks: list[str] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.stream = TextStream(tuple(self.stop))
    self.loop: asyncio.AbstractEventLoop | None = None
    self.event: asyncio.Event | None = None

  async def deltas(self):
    """The text as it arrives (pieces joined when several came between two reads), until the
    generation finishes."""
    while True:
      await self.event.wait()
      self.event.clear()
      chunks, self.chunks = self.chunks, []
      if chunks:
        yield ''.join(chunks)
      if self.finish_reason is not None:
        return

  async def result(self) -> str:
    """The whole text once finished."""
    return ''.join([delta async for delta in self.deltas()])


def _hand_over(batch: list) -> None:
  """On the event loop: each (generation, text, finish reason or None) of one engine step."""
  for generation, text, finish in batch:
    if text:
      generation.chunks.append(text)
    if finish is not None:
      generation.finish_reason = finish
    generation.event.set()


class Engine:
  """Runs `model` (an `LMArtifact`, or anything with its interface) for many requests at once.

  `submit(generation)` (on an event loop) queues a request or raises QueueFull; `cancel`
  frees its slot at the next step. `metrics`, when given, is told `first_token(seconds)` per
  request and `step(gaps)` per decode step (gaps: for each active slot, the seconds since its
  previous token; one token each)."""

  def __init__(self, model, *, max_queue: int = 64, metrics=None):
    self.model, self.max_queue, self.metrics = model, max_queue, metrics
    self.slots, self.max_length, self.eos_id = model.slots, model.max_length, model.eos_id
    self.max_prompt = max(model.buckets)
    self._cond = threading.Condition()
    self._waiting: collections.deque[Generation] = collections.deque()
    self._running: list[Generation | None] = [None] * self.slots
    self._busy = 0  # Slots in use, under the lock: submit's capacity check reads it.
    self._closing = False
    self._thread: threading.Thread | None = None
    self._bytes: dict[int, bytes] = {}  # Token id -> its bytes, looked up once.
    s = self.slots
    # What the decode step takes, one entry per slot (idle slots keep harmless values).
    self._tokens, self._positions = np.zeros(s, np.int32), np.zeros(s, np.int32)
    self._steps, self._seeds = np.zeros(s, np.int32), np.zeros(s, np.uint32)
    self._temperature, self._top_p = np.zeros(s, np.float32), np.ones(s, np.float32)
    self._top_k, self._active = np.zeros(s, np.int32), np.zeros(s, np.int32)

  # The event loop's side.

  @property
  def active_slots(self) -> int:
    return self._busy

  @property
  def queue_length(self) -> int:
    return len(self._waiting)

  def submit(self, generation: Generation) -> None:
    """Queues `generation` (called on the event loop that will read it)."""
    generation.loop, generation.event = asyncio.get_running_loop(), asyncio.Event()
    with self._cond:
      if self._closing:
        raise QueueFull('the server is shutting down')
      if len(self._waiting) >= self.max_queue + self.slots - self._busy:
        raise QueueFull(f'all {self.slots} slots are busy and {len(self._waiting)} requests '
                        'wait: try again later')
      self._waiting.append(generation)
      self._cond.notify()

  def cancel(self, generation: Generation) -> None:
    """Stops `generation`: out of the queue now, out of its slot at the next step."""
    generation.cancelled = True
    with self._cond:
      try:
        self._waiting.remove(generation)
      except ValueError:
        pass

  def start(self) -> None:
    """A fresh cache and the engine thread (after the model's warm-up)."""
    self._cache = self.model.new_cache()
    self._thread = threading.Thread(target=self._loop, name='lm-engine', daemon=True)
    self._thread.start()

  def close(self) -> None:
    """Stops the thread; what still runs or waits finishes with finish_reason 'error'."""
    with self._cond:
      self._closing = True
      self._cond.notify()
    if self._thread is not None:
      self._thread.join()

  # The engine thread's side.

  def _loop(self) -> None:
    while True:
      with self._cond:
        while not self._waiting and not self._busy and not self._closing:
          self._cond.wait()
        if self._closing:
          dropped = [g for g in self._running if g is not None] + list(self._waiting)
          self._waiting.clear()
          break
        admitted = []
        for slot in [s for s, g in enumerate(self._running) if g is None]:
          if not self._waiting:
            break
          self._running[slot] = self._waiting.popleft()
          admitted.append(slot)
        self._busy += len(admitted)
      self._release_cancelled()
      out = []
      try:
        for slot in admitted:
          if self._running[slot] is not None:
            out.append(self._prefill(slot))
        self._deliver(out)  # First tokens before the step: time to first token counts.
        out = []
        if self._active.any():
          out = self._step()
      except Exception as e:  # The requests in the slots fail; the server goes on.
        log.exception('the language model failed')
        out += self._fail_all(f'{type(e).__name__}: {e}')
        self._cache = self.model.new_cache()  # A failed call may have consumed the old one.
      self._deliver(out)
    self._deliver([(g, '', 'error') for g in dropped])

  def _release_cancelled(self) -> None:
    for slot, generation in enumerate(self._running):
      if generation is not None and generation.cancelled:
        self._free(slot)

  def _prefill(self, slot: int) -> tuple:
    """The slot's new request prefilled: (generation, its first text, finish or None)."""
    g = self._running[slot]
    self._cache, token = self.model.prefill(self._cache, slot, g.prompt, seed=g.seed,
                                            temperature=g.temperature, top_k=g.top_k,
                                            top_p=g.top_p)
    now = g.last_token_at = time.perf_counter()
    if self.metrics is not None:
      self.metrics.first_token(now - g.arrival)
    self._tokens[slot], self._positions[slot], self._steps[slot] = token, len(g.prompt), 1
    self._seeds[slot], self._temperature[slot] = g.seed, g.temperature
    self._top_k[slot], self._top_p[slot], self._active[slot] = g.top_k, g.top_p, 1
    return self._accept(slot, int(token))

  def _step(self) -> list:
    """One decode step of every slot; [(generation, new text, finish reason)] of the active."""
    self._cache, tokens = self.model.decode(
        self._cache, self._tokens, self._positions, self._seeds, self._steps,
        self._temperature, self._top_k, self._top_p)
    tokens = np.asarray(tokens, np.int32)
    self._tokens[:] = tokens
    self._positions += self._active
    self._steps += self._active
    now, out, gaps = time.perf_counter(), [], []
    for slot in np.flatnonzero(self._active).tolist():
      generation = self._running[slot]
      gaps.append(now - generation.last_token_at)
      generation.last_token_at = now
      out.append(self._accept(slot, int(tokens[slot])))
    if self.metrics is not None:
      self.metrics.step(gaps)
    return out

  def _accept(self, slot: int, token: int) -> tuple:
    """Token `token` joins the slot's request: (generation, final text, finish or None)."""
    g = self._running[slot]
    g.tokens.append(token)
    if self.eos_id is not None and token == self.eos_id:
      return self._finish(slot, g.stream.add(b'', final=True), 'stop')
    data = self._bytes.get(token)
    if data is None:
      data = self._bytes[token] = self.model.decode_bytes([token])
    text = g.stream.add(data)
    if g.stream.stopped:
      return self._finish(slot, text, 'stop')
    n = len(g.tokens)
    if n == g.max_tokens or len(g.prompt) + n >= self.max_length:
      return self._finish(slot, text + g.stream.add(b'', final=True), 'length')
    return g, text, None

  def _finish(self, slot: int, text: str, reason: str) -> tuple:
    generation = self._running[slot]
    self._free(slot)
    return generation, text, reason

  def _free(self, slot: int) -> None:
    self._running[slot] = None
    self._active[slot], self._positions[slot], self._steps[slot] = 0, 0, 0
    with self._cond:
      self._busy -= 1

  def _fail_all(self, message: str) -> list:
    out = []
    for slot, generation in enumerate(self._running):
      if generation is not None:
        generation.error = message
        out.append(self._finish(slot, '', 'error'))
    return out

  def _deliver(self, out: list) -> None:
    """One hand-over per event loop (one in a server) for the whole step; cancelled requests
    are skipped (nobody reads them)."""
    loops: dict = {}
    for item in out:
      if not item[0].cancelled and item[0].loop is not None:
        loops.setdefault(item[0].loop, []).append(item)
    for loop, batch in loops.items():
      try:
        loop.call_soon_threadsafe(_hand_over, batch)
      except RuntimeError:  # That loop is closed: nobody waits there any more.
        pass
