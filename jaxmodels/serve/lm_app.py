"""The HTTP app `jaxmodels serve` runs for a language-model artifact: OpenAI's completions API
over FastAPI, many requests generated at once by the continuous-batching `lm_engine.Engine`.

  POST /v1/completions  OpenAI's legacy completions: model, prompt (a string, a list of one
                 string, or token ids), max_tokens (16; null: to the end of the context),
                 temperature (1, 0..2), top_p, top_k (an extension; 0: all), stop (up to 4
                 strings), seed, stream (server-sent events of OpenAI's chunks, then
                 `data: [DONE]`; stream_options.include_usage adds a last chunk with usage)
                 -> {id, object: "text_completion", created, model, choices: [{text, index,
                 logprobs: null, finish_reason: "stop" | "length"}], usage}
  GET  /v1/models       the artifact as the one model (its directory's name, or model_name)
  GET  /healthz  the process answers;  /readyz  warm (503 while the programs compile)
  GET  /metrics  Prometheus text;  /docs  OpenAPI;  /  a demo page that streams

Unknown fields of a request are ignored (OpenAI's clients send some); known ones this server
cannot honour (n > 1, echo, logprobs, best_of, suffix, penalties, logit_bias) get 400, as
does anything malformed, in OpenAI's error shape {"error": {"message", "type", "param",
"code"}}; an unknown model 404; a full queue 429. The server goes on after each. A client
that goes away mid-generation frees its slot at the next step.
"""
import asyncio
import contextlib
import gc
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable

import orjson
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from jaxmodels.serve.lm_engine import Engine, Generation, QueueFull
from jaxmodels.serve.request_batching import buckets_up_to
from jaxmodels.serve.request_body import BodyError, read_json
from jaxmodels.serve.server_metrics import LATENCY_BUCKETS, Histogram, Metrics

DEMO_PAGE = os.path.join(os.path.dirname(__file__), 'lm_demo.html')
KIND = 'language_model'
MAX_STOP = 4  # OpenAI's limit on stop strings.
RATE_WINDOW = 10.0  # Seconds the tokens/s gauge averages over.
TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
UNHONOURED = {  # Known fields and the values this server can honour.
    'n': (1,), 'best_of': (None, 1), 'echo': (False,), 'logprobs': (None,), 'suffix': (None,),
    'presence_penalty': (None, 0), 'frequency_penalty': (None, 0), 'logit_bias': (None, {})}
log = logging.getLogger(__name__)


def is_language_model(directory: str) -> bool:
  """Whether `directory` holds a language-model artifact (its manifest's kind)."""
  try:
    with open(os.path.join(directory, 'manifest.json'), encoding='utf-8') as f:
      return json.load(f).get('kind') == KIND
  except (OSError, ValueError, AttributeError):
    return False


class StreamOptions(pydantic.BaseModel):
  include_usage: bool = False


class CompletionRequest(pydantic.BaseModel):
  """OpenAI's completion request; strict types (a max_tokens of "10" is refused, as OpenAI
  does), unknown fields ignored."""
  model_config = pydantic.ConfigDict(strict=True, extra='ignore')
  model: str
  prompt: str | list[str] | list[int]
  max_tokens: int | None = pydantic.Field(16, ge=1)
  temperature: float | None = pydantic.Field(None, ge=0, le=2)
  top_p: float | None = pydantic.Field(None, gt=0, le=1)
  top_k: int | None = pydantic.Field(None, ge=0)
  stop: str | list[str] | None = None
  seed: int | None = pydantic.Field(None, ge=0, lt=1 << 32)
  stream: bool | None = False
  stream_options: StreamOptions | None = None
  n: int | None = 1
  best_of: int | None = None
  echo: bool | None = False
  logprobs: int | None = None
  suffix: str | None = None
  presence_penalty: float | None = None
  frequency_penalty: float | None = None
  logit_bias: dict | None = None
  user: str | None = None


class BadRequest(Exception):
  """A 4xx answer in OpenAI's error shape."""

  def __init__(self, status: int, message: str, param: str | None = None,
               code: str | None = None):
    super().__init__(message)
    self.status, self.param, self.code = status, param, code

  def response(self) -> JSONResponse:
    return error_response(self.status, str(self), self.param, self.code)


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, kind: str = 'invalid_request_error') -> JSONResponse:
  return JSONResponse({'error': {'message': message, 'type': kind, 'param': param,
                                 'code': code}}, status_code=status)


class LMMetrics(Metrics):
  """The server's metrics (requests by status, latency, compilations after warm-up; the
  batch-size histogram counts the active slots of each decode step) plus tokens: generated,
  per second over the last RATE_WINDOW seconds, time to first token, the gap between a
  request's tokens, and the engine's active slots and queue length (`engine` reads them)."""

  def __init__(self, slots: int):
    super().__init__(buckets_up_to(slots))
    self.tokens_total, self.recent = 0, []  # recent: (time, tokens) of the window's steps.
    self.time_to_first_token = Histogram(LATENCY_BUCKETS)
    self.token_gap = Histogram(TOKEN_GAP_BUCKETS)
    self.slots, self.engine = slots, None

  def first_token(self, seconds: float) -> None:
    with self._lock:
      self.time_to_first_token.observe(seconds)
      self.tokens_total += 1
      self._count(1)

  def step(self, gaps: list[float]) -> None:
    with self._lock:
      for gap in gaps:
        self.token_gap.observe(gap)
      self.tokens_total += len(gaps)
      self.batch_size.observe(len(gaps))
      self._count(len(gaps))

  def _count(self, tokens: int) -> None:
    now = time.monotonic()
    self.recent.append((now, tokens))
    if self.recent[0][0] < now - 2 * RATE_WINDOW:  # Trimmed now and then, not every step.
      self.recent = [(t, n) for t, n in self.recent if t >= now - RATE_WINDOW]

  def tokens_per_second(self) -> float:
    since = time.monotonic() - RATE_WINDOW
    with self._lock:
      return sum(n for t, n in self.recent if t >= since) / RATE_WINDOW

  def text(self) -> str:
    rate = self.tokens_per_second()
    active, waiting = ((self.engine.active_slots, self.engine.queue_length)
                       if self.engine is not None else (0, 0))
    with self._lock:
      lines = ['# TYPE jaxmodels_lm_tokens_generated_total counter',
               f'jaxmodels_lm_tokens_generated_total {self.tokens_total}',
               '# TYPE jaxmodels_lm_tokens_per_second gauge',
               f'jaxmodels_lm_tokens_per_second {rate:.3f}',
               '# TYPE jaxmodels_lm_time_to_first_token_seconds histogram',
               *self.time_to_first_token.lines('jaxmodels_lm_time_to_first_token_seconds'),
               '# TYPE jaxmodels_lm_inter_token_latency_seconds histogram',
               *self.token_gap.lines('jaxmodels_lm_inter_token_latency_seconds'),
               '# TYPE jaxmodels_lm_slots gauge', f'jaxmodels_lm_slots {self.slots}',
               '# TYPE jaxmodels_lm_active_slots gauge', f'jaxmodels_lm_active_slots {active}',
               '# TYPE jaxmodels_lm_queue_length gauge', f'jaxmodels_lm_queue_length {waiting}']
    return super().text() + '\n'.join(lines) + '\n'


def make_lm_app(directory: str, *, max_queue: int = 64, max_body_bytes: int = 1 << 20,
                model_name: str | None = None, model=None) -> FastAPI:
  """The app serving the language-model artifact in `directory` (`model`: one already loaded,
  anything with `lm_artifact.LMArtifact`'s interface). Its programs compile in the background
  after start-up (/readyz answers 503 until then); `max_queue` requests wait beyond the busy
  slots (429 past that); `model_name` is the id clients name (default: the directory's name)."""
  if model is None:
    from jaxmodels.serve.lm_artifact import LMArtifact  # Loads weights: only when serving.
    model = LMArtifact(directory)
  model_id = model_name or os.path.basename(os.path.normpath(directory))
  created = int(os.path.getmtime(directory)) if os.path.isdir(directory) else int(time.time())
  metrics = LMMetrics(model.slots)
  engine = Engine(model, max_queue=max_queue, metrics=metrics)
  metrics.engine = engine
  state: dict = {}

  def warm_up() -> None:
    start = time.perf_counter()
    model.warm_up()
    engine.start()
    log.warning('warm: every program compiled in %.1f s', time.perf_counter() - start)

  async def warm_in_background() -> None:
    try:
      await asyncio.to_thread(warm_up)
    except Exception as e:  # Never ready; /readyz says why.
      log.exception('warm-up failed')
      state['failed'] = f'{type(e).__name__}: {e}'
      return
    metrics.warmed_up()
    state['ready'] = True
    gc.freeze()  # What exists now lives as long as the server: out of every collection's walk.

  @contextlib.asynccontextmanager
  async def lifespan(app):
    warming = asyncio.create_task(warm_in_background())
    yield
    state.pop('ready', None)
    if warming.done():
      await asyncio.to_thread(engine.close)

  app = FastAPI(title='jaxmodels serve', lifespan=lifespan,
                description=f'language model {model_id}: OpenAI-compatible completions')

  @app.exception_handler(HTTPException)
  async def http_error(request, e):  # 404, 405, ... in OpenAI's error shape too.
    return error_response(e.status_code, str(e.detail))

  async def read_body(request: Request) -> CompletionRequest:
    try:
      parsed = await read_json(request, max_body_bytes)
    except BodyError as e:
      raise BadRequest(e.status, str(e)) from None
    if not isinstance(parsed, dict):
      raise BadRequest(400, 'the body must be a JSON object')
    try:
      return CompletionRequest.model_validate(parsed)
    except pydantic.ValidationError as e:
      first = e.errors()[0]
      param = str(first['loc'][0]) if first['loc'] else None
      where = '.'.join(map(str, first['loc'])) or 'body'
      raise BadRequest(400, f'{where}: {first["msg"]}', param) from None

  def generation_of(r: CompletionRequest) -> Generation:
    if r.model != model_id:
      raise BadRequest(404, f'the model {r.model!r} does not exist: this server has '
                            f'{model_id!r}', 'model', 'model_not_found')
    for field, honoured in UNHONOURED.items():
      if getattr(r, field) not in honoured:
        raise BadRequest(400, f'{field}={getattr(r, field)!r} is not supported by this server',
                         field, 'unsupported')
    prompt = r.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
      if len(prompt) > 1:
        raise BadRequest(400, f'{len(prompt)} prompts in one request are not supported: send '
                              'one per request', 'prompt', 'unsupported')
      prompt = prompt[0]
    ids = model.encode(prompt) if isinstance(prompt, str) else prompt
    if not len(ids):
      raise BadRequest(400, 'the prompt is empty', 'prompt')
    if not all(0 <= i < model.vocab_size for i in ids):
      raise BadRequest(400, f'token ids are 0 to {model.vocab_size - 1}', 'prompt')
    longest = min(engine.max_prompt, model.max_length - 1)
    if len(ids) > longest:
      raise BadRequest(400, f'the prompt is {len(ids)} tokens: at most {longest}', 'prompt',
                       'context_length_exceeded')
    if r.max_tokens is not None and len(ids) + r.max_tokens > model.max_length:
      raise BadRequest(400, f"this model's context is {model.max_length} tokens: the prompt's "
                            f'{len(ids)} and max_tokens {r.max_tokens} are more; lower '
                            'max_tokens or shorten the prompt', 'max_tokens',
                       'context_length_exceeded')
    stop = [r.stop] if isinstance(r.stop, str) else (r.stop or [])
    if len(stop) > MAX_STOP or not all(stop):
      raise BadRequest(400, f'stop holds at most {MAX_STOP} non-empty strings', 'stop')
    return Generation(list(map(int, ids)), max_tokens=r.max_tokens,
                      temperature=1.0 if r.temperature is None else r.temperature,
                      top_k=r.top_k or 0, top_p=1.0 if r.top_p is None else r.top_p,
                      seed=secrets.randbits(32) if r.seed is None else r.seed, stop=tuple(stop))

  def usage(generation: Generation) -> dict:
    prompt, completion = len(generation.prompt), len(generation.tokens)
    return {'prompt_tokens': prompt, 'completion_tokens': completion,
            'total_tokens': prompt + completion}

  @app.post('/v1/completions', openapi_extra={'requestBody': {'required': True, 'content': {
      'application/json': {'schema': CompletionRequest.model_json_schema()}}}})
  async def completions(request: Request):
    """Generates a continuation of the prompt, as one answer or as server-sent events."""
    start = time.perf_counter()
    metrics.started()
    try:
      if 'ready' not in state:
        raise BadRequest(503, 'the model is warming up: try again when /readyz answers 200')
      parsed = await read_body(request)
      generation = generation_of(parsed)
      try:
        engine.submit(generation)
      except QueueFull as e:
        raise BadRequest(429, str(e), None, 'queue_full') from None
    except BadRequest as e:
      metrics.finished(e.status, time.perf_counter() - start)
      return e.response()
    head = {'id': f'cmpl-{uuid.uuid4().hex}', 'object': 'text_completion',
            'created': int(time.time()), 'model': model_id}
    finished = lambda status: metrics.finished(status, time.perf_counter() - start)
    if parsed.stream:
      include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
      return StreamingResponse(events(generation, head, include_usage, finished),
                               media_type='text/event-stream',
                               headers={'Cache-Control': 'no-cache'})
    return await answer(request, generation, head, finished)

  async def answer(request: Request, generation: Generation, head: dict,
                   finished: Callable) -> Response:
    result = asyncio.ensure_future(generation.result())
    while not (await asyncio.wait({result}, timeout=0.5))[0]:
      if await request.is_disconnected():  # Nobody waits for it: its slot goes to another.
        result.cancel()
        engine.cancel(generation)
        finished(499)
        return Response(status_code=499)
    if generation.finish_reason == 'error':
      finished(500)
      return error_response(500, f'the model failed: {generation.error}', kind='server_error')
    finished(200)
    return Response(orjson.dumps({
        **head, 'choices': [{'text': result.result(), 'index': 0, 'logprobs': None,
                             'finish_reason': generation.finish_reason}],
        'usage': usage(generation)}), media_type='application/json')

  async def events(generation: Generation, head: dict, include_usage: bool,
                   finished: Callable):
    """OpenAI's stream: a chunk per piece of text, one with the finish reason, the usage
    chunk when asked for, then [DONE]."""
    extra = {'usage': None} if include_usage else {}

    def chunk(text: str, finish: str | None, **fields) -> bytes:
      choice = {'text': text, 'index': 0, 'logprobs': None, 'finish_reason': finish}
      return b'data: ' + orjson.dumps({**head, 'choices': [choice], **extra, **fields}) + b'\n\n'

    status = 499
    try:
      async for text in generation.deltas():
        yield chunk(text, None)
      if generation.finish_reason == 'error':
        status = 500
        yield b'data: ' + orjson.dumps({'error': {
            'message': f'the model failed: {generation.error}', 'type': 'server_error',
            'param': None, 'code': None}}) + b'\n\n'
      else:
        yield chunk('', generation.finish_reason)
        if include_usage:
          yield b'data: ' + orjson.dumps({**head, 'choices': [],
                                          'usage': usage(generation)}) + b'\n\n'
        status = 200
      yield b'data: [DONE]\n\n'
    finally:  # Also when the client went away (cancelled here): its slot frees.
      if generation.finish_reason is None:
        engine.cancel(generation)
      finished(status)

  @app.get('/v1/models')
  async def models():
    return {'object': 'list', 'data': [model_card()]}

  @app.get('/v1/models/{name}')
  async def one_model(name: str):
    if name != model_id:
      return error_response(404, f'the model {name!r} does not exist', 'model', 'model_not_found')
    return model_card()

  def model_card() -> dict:
    return {'id': model_id, 'object': 'model', 'created': created, 'owned_by': 'jaxmodels',
            'max_length': model.max_length, 'slots': model.slots}

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok'}

  @app.get('/readyz')
  async def readyz():
    if 'ready' not in state:
      return JSONResponse({'status': state.get('failed', 'warming up')}, status_code=503)
    return {'status': 'ready', 'slots': model.slots, 'buckets': list(model.buckets),
            'max_length': model.max_length}

  @app.get('/metrics', response_class=PlainTextResponse)
  async def metrics_page():
    return metrics.text()

  @app.get('/', response_class=HTMLResponse)
  async def demo():
    with open(DEMO_PAGE, encoding='utf-8') as f:
      page = f.read()
    # Inside <script>: JSON with '<' escaped cannot close the element.
    settings = orjson.dumps({'model': model_id, 'max_length': model.max_length}).decode()
    return page.replace('{{SETTINGS}}', settings.replace('<', '\\u003c'))

  app.state.metrics, app.state.engine = metrics, engine
  return app
