"""`jaxmodels serve` on a language-model artifact: the engine's continuous batching (on a toy
model in numpy: the same tokens alone or among others, stop strings, UTF-8, cancellation, a
bounded queue), then the OpenAI-compatible server in its own process on real artifacts (the
trained byte-level GPT and the GPT-2 BPE fixture of test_lm_export.py), driven by the
official `openai` client: concurrent greedy requests equal `models.gpt.generate` on each
prompt alone, a seed gives the same text among other requests, clients that go away free
their slots, bad requests get OpenAI's errors, the demo page streams (headless Chromium)."""
import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import openai
import pytest

import demo_browser
from jaxmodels import console, models, pretrained
from jaxmodels.serve.lm_engine import Engine, Generation, QueueFull, TextStream
from serve_process import Server
from test_lm_export import BPE_FIXTURE, byte_run  # noqa: F401 (a fixture: the trained GPT)

LETTERS = np.frombuffer(b'abcdefghijklmnopqrstuvwxyz ', np.uint8)


def toy_next(history, seed: int, n: int, temperature: float) -> int:
  """The toy model: greedy, a function of every token so far (a wrong cache shows); sampled,
  of (seed, n) alone, as the artifact's keys are."""
  if temperature == 0:
    return int(LETTERS[int(np.dot(history, np.arange(1, len(history) + 1))) % len(LETTERS)])
  return int(LETTERS[np.random.default_rng([seed, n]).integers(len(LETTERS))])


def toy_generate(prompt: list[int], max_tokens: int, seed: int = 0, temperature: float = 0.0):
  """What one request alone gives: its tokens."""
  history, out = list(prompt), []
  for n in range(max_tokens):
    out.append(toy_next(history, seed, n, temperature))
    history.append(out[-1])
  return out


class ToyModel:
  """`LMArtifact`'s interface over `toy_next`: the cache (S, max_length) holds each slot's
  tokens; `delay` seconds per decode step."""

  def __init__(self, slots=4, max_length=48, eos_id=None, delay=0.0):
    self.slots, self.max_length, self.eos_id, self.delay = slots, max_length, eos_id, delay
    self.buckets, self.vocab_size = (8, 16, 32), 256
    self.decode_steps = 0

  def encode(self, text):
    return list(text.encode())

  def decode_bytes(self, ids):
    return bytes(ids)

  def new_cache(self):
    return np.zeros((self.slots, self.max_length), np.int64)

  def warm_up(self):
    pass

  def prefill(self, cache, slot, prompt_ids, *, seed, temperature, top_k, top_p):
    cache = cache.copy()
    cache[slot, :len(prompt_ids)] = prompt_ids
    return cache, toy_next(cache[slot, :len(prompt_ids)], seed, 0, temperature)

  def decode(self, cache, tokens, positions, seeds, steps, temperature, top_k, top_p):
    assert all(len(a) == self.slots for a in (tokens, positions, seeds, steps, temperature))
    if self.delay:
      import time
      time.sleep(self.delay)
    self.decode_steps += 1
    cache, out = cache.copy(), np.zeros(self.slots, np.int32)
    for s in range(self.slots):
      p = min(int(positions[s]), self.max_length - 1)  # Idle slots: anything, ignored.
      cache[s, p] = tokens[s]
      out[s] = toy_next(cache[s, :p + 1], int(seeds[s]), int(steps[s]), float(temperature[s]))
    return cache, out


def run(coroutine):
  return asyncio.run(asyncio.wait_for(coroutine, 60))


def started(model, **kwargs) -> Engine:
  engine = Engine(model, **kwargs)
  engine.start()
  return engine


def test_text_stream_holds_back_split_characters_and_stop_string_starts():
  stream, pieces = TextStream(), []
  text = 'héllo, wörld: 3 € and 🙂!'
  for byte in text.encode():
    pieces.append(stream.add(bytes([byte])))
  pieces.append(stream.add(b'', final=True))
  assert ''.join(pieces) == text and not any('\ufffd' in p for p in pieces)
  stream = TextStream(('END', 'x!'))
  assert [stream.add(b'abcEN'), stream.add(b'Dzzz')] == ['abc', ''] and stream.stopped
  assert stream.text == 'abc'
  stream = TextStream(('END',))
  assert [stream.add(b'abcEN'), stream.add(b'x'), stream.add(b'E', final=True)] == [
      'abc', 'ENx', 'E']
  stream = TextStream(('\n\n',))
  assert stream.add(b'one\n') == 'one' and stream.add(b'\ntwo') == '' and stream.text == 'one'
  assert TextStream().add(b'\xff\xc3', final=True) == '\ufffd\ufffd'  # As bytes.decode does.


def test_many_requests_at_once_give_what_each_gives_alone():
  model = ToyModel(slots=4)
  prompts = [list(f'prompt {i} ' .encode()) * (1 + i % 3) for i in range(10)]

  async def main():
    engine = started(model)
    greedy = [Generation(p, max_tokens=12, temperature=0.0) for p in prompts]
    sampled = [Generation(p, max_tokens=12, temperature=1.0, seed=7 + i)
               for i, p in enumerate(prompts)]
    for g in greedy + sampled:
      engine.submit(g)
    texts = await asyncio.gather(*(g.result() for g in greedy + sampled))
    engine.close()
    return greedy + sampled, texts

  generations, texts = run(main())
  for i, (g, text) in enumerate(zip(generations, texts)):
    expected = toy_generate(g.prompt, 12, g.seed, g.temperature)
    assert g.tokens == expected and text == bytes(expected).decode(), i
    assert g.finish_reason == 'length'
  assert model.decode_steps < 10 * 11  # Steps were shared.


def test_stop_strings_eos_and_the_end_of_the_context():
  prompt = list(b'the toy model says ')
  alone = bytes(toy_generate(prompt, 20)).decode()
  stop = alone[6:9]
  model = ToyModel(slots=2, eos_id=ord(alone[4]))

  async def main():
    engine = started(ToyModel(slots=2))
    with_stop = Generation(prompt, max_tokens=20, temperature=0.0, stop=('qqq', stop))
    engine.submit(with_stop)
    streamed = [d async for d in with_stop.deltas()]
    engine.close()
    engine = started(ToyModel(slots=2))
    to_the_end = Generation(prompt, max_tokens=None, temperature=0.0)
    engine.submit(to_the_end)
    await to_the_end.result()
    engine.close()
    engine = started(model)
    eos = Generation(prompt, max_tokens=20, temperature=0.0)
    engine.submit(eos)
    text = await eos.result()
    engine.close()
    return with_stop, streamed, to_the_end, eos, text

  with_stop, streamed, to_the_end, eos, text = run(main())
  assert ''.join(streamed) == alone[:alone.index(stop)] and with_stop.finish_reason == 'stop'
  assert to_the_end.finish_reason == 'length'
  assert len(prompt) + len(to_the_end.tokens) == model.max_length
  end = alone.index(alone[4])
  assert text == alone[:end] and eos.finish_reason == 'stop' and len(eos.tokens) == end + 1


def test_cancelled_requests_free_their_slots_and_the_queue_is_bounded():
  model = ToyModel(slots=3, delay=0.002)

  async def main():
    engine = started(model, max_queue=20)
    gens = [Generation(list(b'cancel me'), max_tokens=30, temperature=0.0) for _ in range(12)]
    for g in gens:
      engine.submit(g)
    for g in gens[:3]:
      await anext(g.deltas())
    for g in gens:
      engine.cancel(g)
    for _ in range(200):
      if engine.active_slots == engine.queue_length == 0:
        break
      await asyncio.sleep(0.01)
    idle = engine.active_slots, engine.queue_length
    after = [Generation(list(b'next'), max_tokens=5, temperature=0.0) for _ in range(6)]
    for g in after:
      engine.submit(g)
    texts = await asyncio.gather(*(g.result() for g in after))
    engine.close()
    unstarted = Engine(model, max_queue=2)  # No thread: nothing leaves the queue.
    for _ in range(3 + 2):
      unstarted.submit(Generation([1]))
    with pytest.raises(QueueFull):
      unstarted.submit(Generation([1]))
    return idle, texts

  idle, texts = run(main())
  assert idle == (0, 0)
  assert texts == [bytes(toy_generate(list(b'next'), 5)).decode()] * 6



def test_a_failing_step_fails_its_requests_and_the_engine_goes_on():
  model = ToyModel(slots=2)
  steps = model.decode

  def fails_once(*args):
    if model.decode_steps == 2:
      model.decode_steps += 1
      raise RuntimeError('device lost')
    return steps(*args)

  model.decode = fails_once

  async def main():
    engine = started(model)
    first = [Generation(list(b'abc'), max_tokens=10, temperature=0.0) for _ in range(2)]
    for g in first:
      engine.submit(g)
    texts = await asyncio.gather(*(g.result() for g in first))
    after = Generation(list(b'abc'), max_tokens=10, temperature=0.0)
    engine.submit(after)
    text = await after.result()
    engine.close()
    return first, texts, after, text

  first, texts, after, text = run(main())
  assert [g.finish_reason for g in first] == ['error', 'error']
  assert first[0].error == 'RuntimeError: device lost' and len(texts[0]) == 3
  assert after.finish_reason == 'length' and text == bytes(toy_generate(list(b'abc'), 10)).decode()

# The server, in its own process, on real artifacts.

SLOTS = 4
MAX_TOKENS = 12


@pytest.fixture(scope='module')
def byte_artifact_dir(byte_run, tmp_path_factory):  # noqa: F811 (byte_run is a fixture)
  out = str(tmp_path_factory.mktemp('lm_serve') / 'bytes-gpt')
  assert console.main(['export', byte_run.workdir, '--out', out, '--platforms', 'cpu',
                       '--slots', str(SLOTS)]) == 0
  return out


@pytest.fixture(scope='module')
def server(byte_artifact_dir):
  server = Server(byte_artifact_dir)
  yield server
  assert server.stop() == -signal.SIGTERM


def client(server: Server):
  """The official client; no retries (a 429 or 503 is the answer under test)."""
  return openai.OpenAI(base_url=server.url + '/v1', api_key='unused', max_retries=0)


def completions(server: Server, requests: list[dict], model: str = 'bytes-gpt') -> list:
  """The requests sent at once, one thread each; their Completion answers in order."""
  api = client(server)
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    return list(pool.map(lambda r: api.completions.create(model=model, **r), requests))


def generated_text(module, params, prompt: list[int], tokens: int, decode_bytes,
                   eos_id=None) -> str:
  """What `models.gpt.generate` continues `prompt` with alone (greedy), up to the first EOS,
  as the server's text: the tokens' bytes decoded as UTF-8 (U+FFFD for broken sequences)."""
  out = models.generate(module, params, np.array([prompt], np.int32), jax.random.key(0),
                        max_new_tokens=tokens, temperature=0.0)
  ids = np.asarray(out)[0, len(prompt):].tolist()
  if eos_id in ids:
    ids = ids[:ids.index(eos_id)]
  return decode_bytes(ids).decode('utf-8', errors='replace')


def test_the_openai_client_completes_and_streams(server):
  api = client(server)
  assert [m.id for m in api.models.list().data] == ['bytes-gpt']
  answer = api.completions.create(model='bytes-gpt', prompt='The model reads', max_tokens=20,
                                  temperature=0)
  text = answer.choices[0].text
  assert answer.object == 'text_completion' and answer.choices[0].finish_reason == 'length'
  assert (answer.usage.prompt_tokens, answer.usage.completion_tokens,
          answer.usage.total_tokens) == (15, 20, 35)
  chunks = list(api.completions.create(model='bytes-gpt', prompt='The model reads',
                                       max_tokens=20, temperature=0, stream=True,
                                       stream_options={'include_usage': True}))
  # Pieces as they come (one per step here; several steps' tokens join when the reader lags).
  assert ''.join(c.choices[0].text for c in chunks if c.choices) == text
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == 'length'
  assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
  stop = text[4:7]  # Cut where the stop string starts; the stop string is not returned.
  stopped = api.completions.create(model='bytes-gpt', prompt='The model reads', max_tokens=20,
                                   temperature=0, stop=[stop, 'qqqq'])
  assert stopped.choices[0].text == text[:text.index(stop)]
  assert stopped.choices[0].finish_reason == 'stop'


def test_concurrent_greedy_requests_equal_generate_on_each_prompt_alone(byte_run, server):  # noqa: F811
  text = ('The model reads a prompt and writes the next byte of the text while the server '
          'keeps every slot busy with another request.')
  # Every prefill bucket and its edges; generate compiles once per length.
  lengths = [1, 16, 17, 33, 52]
  prompts = [text[i:i + n] for i in (0, 7, 21, 40) for n in lengths]
  answers = completions(server, [{'prompt': p, 'max_tokens': MAX_TOKENS, 'temperature': 0}
                                 for p in prompts])
  params = byte_run.variables['params']
  for prompt, answer in zip(prompts, answers):
    expected = generated_text(byte_run.module, params, list(prompt.encode()), MAX_TOKENS, bytes)
    assert answer.choices[0].text == expected, prompt
  assert server.metric('jaxmodels_compilations_after_warmup_total') == 0


def test_a_seed_gives_the_same_text_alone_or_among_others(server):
  sampled = {'temperature': 0.9, 'top_p': 0.95, 'max_tokens': 24,
             'extra_body': {'top_k': 40}}  # top_k: an extension, outside the client's API.
  request = {'prompt': 'The server keeps', 'seed': 1234, **sampled}
  alone = completions(server, [request])[0].choices[0].text
  others = [{'prompt': 'Every request ' * (1 + i % 2), 'seed': i, **sampled} for i in range(15)]
  together = completions(server, others[:7] + [request] + others[7:])
  assert together[7].choices[0].text == alone
  assert completions(server, [{**request, 'seed': 1235}])[0].choices[0].text != alone


def stream_then_hang_up(url: str, prompt: str, events: int) -> int:
  """A streaming client that reads `events` server-sent events, then closes the connection."""
  host, port = url.removeprefix('http://').split(':')
  body = json.dumps({'model': 'bytes-gpt', 'prompt': prompt, 'max_tokens': 50,
                     'stream': True}).encode()
  with socket.create_connection((host, int(port)), timeout=60) as s:
    s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
              b'Content-Length: %d\r\n\r\n' % len(body) + body)
    seen = b''
    while seen.count(b'data: ') < events:
      data = s.recv(4096)
      if not data:
        break
      seen += data
  return seen.count(b'data: ')


def test_clients_that_go_away_free_their_slots(server):
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    seen = list(pool.map(lambda i: stream_then_hang_up(server.url, f'Client {i} asks', 3),
                         range(32)))
  assert min(seen) >= 3
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and (server.metric('jaxmodels_lm_active_slots') or
                                         server.metric('jaxmodels_lm_queue_length')):
    time.sleep(0.05)
  assert server.metric('jaxmodels_lm_active_slots') == 0
  assert server.metric('jaxmodels_lm_queue_length') == 0
  answers = completions(server, [{'prompt': f'Then {i}', 'max_tokens': 8} for i in range(16)])
  assert [a.usage.completion_tokens for a in answers] == [8] * 16
  text = server.request('GET', '/metrics')[1]
  assert 'jaxmodels_requests_total{status="499"}' in text  # The hung-up ones, counted.


def _error_shape(answer) -> bool:
  error = answer.get('error') if isinstance(answer, dict) else None
  return (isinstance(error, dict) and set(error) == {'message', 'type', 'param', 'code'} and
          error['type'] == 'invalid_request_error' and error['message'])


def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, byte_artifact_dir):
  good = {'model': 'bytes-gpt', 'prompt': 'The ', 'max_tokens': 2}
  bad = [  # (body, status, param)
      ({**good, 'max_tokens': 61}, 400, 'max_tokens'),  # past the context (4 + 61 > 64)
      ({**good, 'prompt': 'x' * 64}, 400, 'prompt'),  # no room after the prompt
      ({**good, 'prompt': ''}, 400, 'prompt'),
      ({**good, 'prompt': [999]}, 400, 'prompt'),  # token ids out of the vocabulary
      ({**good, 'temperature': -0.1}, 400, 'temperature'),
      ({**good, 'temperature': 2.5}, 400, 'temperature'),
      ({**good, 'top_p': 1.5}, 400, 'top_p'),
      ({**good, 'top_p': 0}, 400, 'top_p'),
      ({**good, 'top_k': -1}, 400, 'top_k'),
      ({**good, 'model': 'gpt-4'}, 404, 'model'),
      ({key: v for key, v in good.items() if key != 'model'}, 400, 'model'),
      ({**good, 'n': 2}, 400, 'n'),
      ({**good, 'echo': True}, 400, 'echo'),
      ({**good, 'logprobs': 2}, 400, 'logprobs'),
      ({**good, 'prompt': ['one', 'two']}, 400, 'prompt'),  # several prompts
      (b'{"model": "bytes-gpt", "prompt": ', 400, None),  # malformed JSON
      ([good], 400, None),  # not an object
      ({**good, 'max_tokens': 'ten'}, 400, 'max_tokens'),  # a wrong type
      ({**good, 'max_tokens': 0}, 400, 'max_tokens'),
      ({**good, 'stop': ['a', 'b', 'c', 'd', 'e']}, 400, 'stop'),  # 5 stop strings
      ({**good, 'stop': ['']}, 400, 'stop'),
      ({**good, 'seed': -1}, 400, 'seed'),
      ({**good, 'stream': 'yes'}, 400, 'stream'),
  ]
  for body, status, param in bad:
    answer = server.request('POST', '/v1/completions', body)
    assert answer[0] == status and _error_shape(answer[1]), (body, answer)
    assert answer[1]['error']['param'] == param, (body, answer)
    assert server.request('POST', '/v1/completions', good)[0] == 200, body
  # Unknown fields are ignored (OpenAI's clients send some); GET is 405 in the same shape.
  assert server.request('POST', '/v1/completions', {**good, 'user': 'me', 'extra': 1})[0] == 200
  status, answer = server.request('GET', '/v1/completions')
  assert status == 405 and _error_shape(answer)
  assert server.metric('jaxmodels_compilations_after_warmup_total') == 0
  # A full queue: no waiting beyond the slots (--max-queue 0), more requests than slots at once.
  busy = Server(byte_artifact_dir, '--max-queue', '0')
  try:
    statuses, answers = [], []
    for _ in range(5):  # Normally once: the requests come faster than 50 tokens each.
      with concurrent.futures.ThreadPoolExecutor(3 * SLOTS) as pool:
        results = list(pool.map(lambda _: busy.request('POST', '/v1/completions', {
            **good, 'max_tokens': 50}), range(3 * SLOTS)))
      statuses, answers = [s for s, _ in results], [a for _, a in results]
      if 429 in statuses:
        break
    assert set(statuses) == {200, 429} and statuses.count(200) >= SLOTS, statuses
    refused = answers[statuses.index(429)]
    assert _error_shape(refused) and refused['error']['code'] == 'queue_full'
    assert busy.request('POST', '/v1/completions', good)[0] == 200
  finally:
    busy.stop()


@pytest.fixture(scope='module')
def bpe_server(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('lm_serve') / 'bpe')
  assert console.main(['export', f'hf:{BPE_FIXTURE}', '--out', out, '--platforms', 'cpu',
                       '--slots', str(SLOTS)]) == 0
  server = Server(out, '--model-name', 'tiny-gpt2')
  yield server
  server.stop()


@pytest.mark.slow
def test_the_bpe_fixture_served_equals_generate(bpe_server):
  """GPT-2's byte-level BPE: pieces of characters across tokens, an end-of-text token."""
  with open(os.path.join(BPE_FIXTURE, 'reference_generate.json'), encoding='utf-8') as f:
    reference = json.load(f)
  module, variables = pretrained.load_pretrained(BPE_FIXTURE)
  from tokenizers import Tokenizer
  tokenizer = Tokenizer.from_file(os.path.join(BPE_FIXTURE, 'tokenizer.json'))
  decode_bytes = lambda ids: tokenizer.decode(ids).encode()  # Checked against the server's.
  prompts = [g['prompt'] for g in reference['generations']] * 2
  tokens = 24  # The longest prompt is 39 tokens: 63 of the 64.
  answers = completions(bpe_server, [{'prompt': p, 'max_tokens': tokens, 'temperature': 0}
                                     for p in prompts], model='tiny-gpt2')
  for prompt, answer in zip(prompts, answers):
    ids = tokenizer.encode(prompt).ids
    expected = generated_text(module, variables['params'], ids, tokens, decode_bytes,
                              reference['eos_id'])
    assert answer.choices[0].text == expected, prompt
    assert answer.usage.prompt_tokens == len(ids)


@pytest.mark.slow
@pytest.mark.skipif(demo_browser.MISSING is not None, reason=str(demo_browser.MISSING))
def test_the_demo_page_streams_what_the_api_answers(server):
  """A person's path: a prompt typed, temperature slid to 0 and max tokens to 20, Generate
  clicked; the text arrives through the stream and equals the API's."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  with demo_browser.chrome() as driver:
    demo_browser.open_page(driver, server.url + '/', '#prompt')
    driver.find_element(By.CSS_SELECTOR, '#prompt').send_keys('The model reads')
    driver.find_element(By.CSS_SELECTOR, '#temperature').send_keys(Keys.HOME)
    driver.find_element(By.CSS_SELECTOR, '#max-tokens').send_keys(Keys.HOME, *[Keys.RIGHT] * 19)
    assert demo_browser.texts(driver, 'output') == ['0', '20']
    demo_browser.click(driver, '#generate')
    status = demo_browser.wait_text(driver, '#status',
                                    lambda text: text == 'done' or text.startswith('error'))
    assert status == 'done'
    shown = demo_browser.attributes(driver, '#completion', 'textContent')[0]
    pieces = int(demo_browser.attributes(driver, '#completion', 'data-pieces')[0])
    assert 'finish: length' in demo_browser.texts(driver, '#stats')[0]
  answer = client(server).completions.create(model='bytes-gpt', prompt='The model reads',
                                             max_tokens=20, temperature=0)
  assert shown == answer.choices[0].text and pieces >= 1


@pytest.mark.slow
def test_the_load_benchmark_runs(byte_artifact_dir, tmp_path):
  """benchmarks/serve_lm_load.py --quick end to end: no errors, no compilation after warm-up,
  every figure printed."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, 'benchmarks/serve_lm_load.py', byte_artifact_dir,
                           '--quick', '--json', str(tmp_path / 'load.json')], cwd=root,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  for line in ('cpu: ', '1 client alone', '3 clients at once', 'aggregate tokens/s',
               'in-process generate  batch 1:', 'errors: 0; compilations after warm-up: 0'):
    assert line in result.stdout, result.stdout
  with open(tmp_path / 'load.json', encoding='utf-8') as f:
    figures = json.load(f)
  assert figures['together']['errors'] == 0 and figures['together']['tokens'] == 3 * 8
  assert figures['compilations_after_warmup'] == 0
