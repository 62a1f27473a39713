"""The HTTP app `jaxmodels serve` runs: an exported model over FastAPI.

  POST /predict  {"inputs": [...]} | {"images": ["<base64 PNG/JPEG>", ...]} | {"texts": [...]}
                 (+ "top_k") -> {"predictions": [[{"label", "index", "probability"}, ...], ...]}
  GET  /healthz  the process answers;  /readyz  every batch bucket is compiled (warm)
  GET  /metrics  Prometheus text;  /docs  OpenAPI;  /  a demo page

Concurrent requests are batched (`request_batching.Batcher`). Bad requests get a 4xx JSON
{"error": "..."} and the server goes on. On SIGTERM uvicorn stops accepting connections,
the requests in flight finish, then the batcher stops.
"""
import asyncio
import base64
import binascii
import contextlib
import gc
import os
import time

import numpy as np
import orjson
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from jaxmodels.errors import InputError
from jaxmodels.serve import artifact, request_batching
from jaxmodels.serve.inputs import InputReader
from jaxmodels.serve.server_metrics import Metrics
from jaxmodels.serve.exported_model import load_exported

DEMO_PAGE = os.path.join(os.path.dirname(__file__), 'demo.html')


class PredictRequest(pydantic.BaseModel):
  """Exactly one of inputs (numbers, (N, *input shape) or one example), images (base64
  encoded files) or texts."""
  model_config = pydantic.ConfigDict(extra='forbid')
  inputs: list | None = None
  images: list[str] | None = None
  texts: list[str] | None = None
  top_k: int = pydantic.Field(artifact.DEFAULT_TOP_K, ge=1)


class BadRequest(Exception):
  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def make_app(directory: str, *, max_batch_size: int = 64, max_wait_ms: float = 5.0,
             max_body_bytes: int = 4 << 20) -> FastAPI:
  """The app serving the artifact in `directory`; its lifespan compiles every bucket up to
  `max_batch_size` (1: one request at a time, no batching) before the first request."""
  model = load_exported(directory)
  reader = InputReader(model.manifest)
  buckets = request_batching.buckets_up_to(max_batch_size)
  metrics = Metrics(buckets)
  state = {}

  @contextlib.asynccontextmanager
  async def lifespan(app):
    functions = {size: model.compile(size) for size in buckets}
    for size, fn in functions.items():  # Run each once: the first call does any setup.
      fn(np.zeros((size, *reader.shape), reader.dtype))
    state['batcher'] = request_batching.Batcher(functions, max_wait_ms if max_batch_size > 1 else 0,
                                        metrics.batch)
    metrics.warmed_up()
    # The objects made so far (jax, the app, the compiled buckets) live as long as the server.
    # Frozen, they are no longer walked by each garbage collection, which the thousand lists
    # of a parsed JSON image set off every request or so: 3-4x the parse time otherwise.
    gc.freeze()
    yield
    state.pop('batcher').close()

  app = FastAPI(title='jaxmodels serve', lifespan=lifespan,
                description=f'{model.manifest["run"]["task"]} '
                            f'({model.manifest["run"]["model"]["name"]})')

  @app.exception_handler(HTTPException)
  async def http_error(request, e):  # 404, 405, ... as JSON {"error"} like the others.
    return JSONResponse({'error': str(e.detail)}, status_code=e.status_code)

  async def read_body(request: Request) -> dict:
    declared = request.headers.get('content-length')
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
      raise BadRequest(413, f'the body is {int(declared):,} bytes: at most {max_body_bytes:,}')
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > max_body_bytes:
        raise BadRequest(413, f'the body is over {max_body_bytes:,} bytes')
    try:  # orjson: a quarter of the stdlib's time on a 28x28 list of numbers.
      parsed = orjson.loads(body)
    except orjson.JSONDecodeError as e:
      raise BadRequest(400, f'the body is not valid JSON ({e})') from None
    try:
      return PredictRequest.model_validate(parsed)
    except pydantic.ValidationError as e:
      first = e.errors()[0]
      where = '.'.join(map(str, first['loc'])) or 'body'
      raise BadRequest(422, f'{where}: {first["msg"]}') from None

  def examples_of(request: PredictRequest) -> np.ndarray:
    given = [k for k in ('inputs', 'images', 'texts') if getattr(request, k) is not None]
    if len(given) != 1:
      raise BadRequest(422, 'give exactly one of inputs, images or texts')
    if request.images is not None:
      try:
        encoded = [base64.b64decode(image, validate=True) for image in request.images]
      except (binascii.Error, ValueError):
        raise BadRequest(422, 'images must be base64-encoded image files') from None
      examples = reader.images(encoded)
    elif request.texts is not None:
      examples = reader.texts(request.texts)
    else:
      examples = reader.array(request.inputs)
    if len(examples) > max_batch_size:
      raise BadRequest(413, f'{len(examples)} examples in one request: at most {max_batch_size}')
    return examples

  @app.post('/predict', openapi_extra={'requestBody': {'required': True, 'content': {
      'application/json': {'schema': PredictRequest.model_json_schema()}}}})
  async def predict(request: Request):
    """Top-k labels with probabilities for each example, most probable first."""
    start, status = time.perf_counter(), 200
    metrics.started()
    try:
      parsed = await read_body(request)
      logits = await asyncio.wrap_future(state['batcher'].submit(examples_of(parsed)))
      # Serialised here: FastAPI's generic encoder would walk every record again.
      return Response(orjson.dumps({'predictions': artifact.top_k(
          logits, model.class_names, parsed.top_k)}), media_type='application/json')
    except InputError as e:
      status = 422
      return JSONResponse({'error': str(e)}, status_code=status)
    except BadRequest as e:
      status = e.status
      return JSONResponse({'error': str(e)}, status_code=status)
    finally:
      metrics.finished(status, time.perf_counter() - start)

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok'}

  @app.get('/readyz')
  async def readyz():
    if 'batcher' not in state:
      return JSONResponse({'status': 'warming up'}, status_code=503)
    return {'status': 'ready', 'buckets': list(buckets)}

  @app.get('/metrics', response_class=PlainTextResponse)
  async def metrics_page():
    return metrics.text()

  @app.get('/', response_class=HTMLResponse)
  async def demo():
    with open(DEMO_PAGE, encoding='utf-8') as f:
      return f.read().replace('{{INPUT_KIND}}', reader.kind)

  app.state.metrics = metrics
  return app
