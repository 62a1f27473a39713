"""The HTTP app `jaxmodels serve` runs: the versions of a model repository (or one exported
model) over FastAPI.

  POST /predict  {"inputs": [...]} | {"images": ["<base64 PNG/JPEG>", ...]} | {"texts": [...]}
                 (+ "top_k") -> {"predictions": [[{"label", "index", "probability"}, ...], ...],
                 "prediction_ids": [uuid hex per example], "model_version": n}
  GET  /healthz  the process answers;  /readyz  every batch bucket is compiled (warm)
  GET  /metrics  Prometheus text;  /docs  OpenAPI;  /  a demo page
  /v1/versions, /v1/rollback  the serving state (`versions_routes`);  /v1/feedback  labels
                 for served predictions (`feedback_routes`);  /v1/monitor, /monitor  drift
                 and live quality per version (`monitor_routes`), also as gauges in /metrics

A request goes to the champion, or to the canary for its share of the request ids (the
`X-Request-Id` header, else a fresh one: a retry with the same id meets the same version);
the answer names it in `X-Model-Version`. A shadow version sees the same examples in the
background. Every prediction is recorded in the prediction store when there is one (off the
request path). Concurrent requests are batched per version (`request_batching.Batcher`). Bad
requests get a 4xx JSON {"error": "..."} and the server goes on. On SIGTERM uvicorn stops
accepting connections, the requests in flight finish, then the batchers stop.
"""
import asyncio
import base64
import binascii
import contextlib
import gc
import os
import random
import time
import uuid

import numpy as np
import orjson
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from jaxmodels.errors import InputError
from jaxmodels.serve import artifact, request_batching
from jaxmodels.serve.feedback_routes import add_feedback_route
from jaxmodels.serve.inputs import InputReader
from jaxmodels.serve.model_repository import STORE_FILE, ModelRepository
from jaxmodels.serve.monitor import DEFAULT_WINDOW, Monitor, gauges
from jaxmodels.serve.monitor_routes import add_monitor_routes
from jaxmodels.serve.prediction_store import PredictionStore, new_record
from jaxmodels.serve.request_body import BodyError, read_json
from jaxmodels.serve.promotion_gate import PromotionGate
from jaxmodels.serve.served_versions import OneArtifact, VersionTable, Warming
from jaxmodels.serve.server_metrics import COMPILE_EVENT, Metrics
from jaxmodels.serve.versions_routes import add_version_routes, read_token

DEMO_PAGE = os.path.join(os.path.dirname(__file__), 'demo.html')
NO_STORE = ('off', 'none')  # --store values that record nothing


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


class ServingMetrics(Metrics):
  """The server's metrics plus requests per version, shadow errors and dropped prediction
  records; compilations while a version warms up (before it serves) are not counted as
  compilations after warm-up."""

  def __init__(self, batch_buckets, warming: Warming):
    self.warming, self.by_version, self.shadow_errors = warming, {}, 0
    self.records_dropped = lambda: 0
    super().__init__(batch_buckets)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    if event == COMPILE_EVENT and self.warming.active():
      with self._lock:
        self.compilations += 1
      return
    super()._on_event(event, duration, **kwargs)

  def answered_by(self, version: int) -> None:
    with self._lock:
      self.by_version[version] = self.by_version.get(version, 0) + 1

  def shadow_failed(self) -> None:
    with self._lock:
      self.shadow_errors += 1

  def text(self) -> str:
    with self._lock:
      lines = ['# TYPE jaxmodels_version_requests_total counter',
               *(f'jaxmodels_version_requests_total{{version="{v}"}} {n}'
                 for v, n in sorted(self.by_version.items())),
               '# TYPE jaxmodels_shadow_errors_total counter',
               f'jaxmodels_shadow_errors_total {self.shadow_errors}']
    return super().text() + '\n'.join([
        *lines, '# TYPE jaxmodels_prediction_records_dropped_total counter',
        f'jaxmodels_prediction_records_dropped_total {self.records_dropped()}']) + '\n'


def make_app(path: str, *, max_batch_size: int = 64, max_wait_ms: float = 5.0,
             max_body_bytes: int = 4 << 20, store: str | None = None, log_inputs: float = 0.0,
             admin_token_file: str | None = None, monitor_window: int = DEFAULT_WINDOW,
             drift_correction: str = 'bonferroni', gate: PromotionGate | None = None) -> FastAPI:
  """The app serving `path`: a model repository (its serving state; predictions recorded
  into `store`, default REPO/monitor.db) or one artifact directory (version 1; recorded only
  into a `store` given; `store='off'` or `'none'` records nothing). `log_inputs`: the
  fraction of examples whose input bytes are kept. Its lifespan compiles every bucket up to
  `max_batch_size` (1: one request at a time, no batching) of every loaded version before the
  first request. `monitor_window`: predictions per drift window; `drift_correction`:
  'bonferroni' or 'fdr'; `gate`: the promotion gate (`promotion_gate`)."""
  if not 0 <= log_inputs <= 1:
    raise InputError(f'log_inputs is a fraction in [0, 1], got {log_inputs}', key='log_inputs')
  if monitor_window < 2 or drift_correction not in ('bonferroni', 'fdr'):
    raise InputError(f'monitor_window must be at least 2 and drift_correction bonferroni or fdr, '
                     f'got {monitor_window} and {drift_correction!r}', key='monitor_window')
  if ModelRepository.is_single_artifact(path):
    repo = OneArtifact(path)
  else:
    repo = ModelRepository(path)
    if not repo.versions():
      raise InputError(f'{path} is neither an exported model nor a repository with a version: '
                       'run `export` first', key='directory')
    store = store or os.path.join(path, STORE_FILE)
  if store in NO_STORE:  # Recording off: a baseline to measure its cost against.
    store = None
  buckets = request_batching.buckets_up_to(max_batch_size)
  warming = Warming()
  metrics = ServingMetrics(buckets, warming)
  table = VersionTable(repo, buckets=buckets, max_wait_ms=max_wait_ms if max_batch_size > 1 else 0,
                       observe=metrics.batch, warming=warming)
  champion_manifest = repo.manifest(repo.state().champion)
  reader = InputReader(champion_manifest)  # Every version shares the champion's input spec.
  token = read_token(admin_token_file)
  state, shadows = {}, set()

  @contextlib.asynccontextmanager
  async def lifespan(app):
    state['store'] = None if store is None else await asyncio.to_thread(PredictionStore, store)
    app.state.store = state['store']
    if state['store'] is not None:
      state['monitor'] = Monitor(state['store'], reference_of, class_names,
                                 window=monitor_window, correction=drift_correction)
    metrics.records_dropped = lambda: state['store'].dropped if state['store'] else 0
    await asyncio.to_thread(table.start)
    state['ready'] = True
    metrics.warmed_up()
    # The objects made so far (jax, the app, the compiled buckets) live as long as the server.
    # Frozen, they are no longer walked by each garbage collection, which the thousand lists
    # of a parsed JSON image set off every request or so: 3-4x the parse time otherwise.
    gc.freeze()
    yield
    state.pop('ready')
    if shadows:
      await asyncio.wait(list(shadows), timeout=30)
    table.close()
    if state['store'] is not None:
      await asyncio.to_thread(state['store'].close)

  app = FastAPI(title='jaxmodels serve', lifespan=lifespan,
                description=f'{champion_manifest["run"]["task"]} '
                            f'({champion_manifest["run"]["model"]["name"]})')

  @app.exception_handler(HTTPException)
  async def http_error(request, e):  # 404, 405, ... as JSON {"error"} like the others.
    return JSONResponse({'error': str(e.detail)}, status_code=e.status_code)

  async def read_body(request: Request) -> dict:
    try:
      parsed = await read_json(request, max_body_bytes)
    except BodyError as e:
      raise BadRequest(e.status, str(e)) from None
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

  def records_of(top_k: list, examples: np.ndarray, served, seconds: float) -> list:
    summaries = served.summaries(examples)
    return [new_record(row, example.tobytes(), model_version=served.version,
                       latency_ms=1000 * seconds,
                       keep_input=log_inputs > 0 and random.random() < log_inputs,
                       summary=None if summaries is None else summaries[i])
            for i, (row, example) in enumerate(zip(top_k, examples))]

  def reference_of(version: int):
    served = table.routing.served.get(version) if table.routing else None
    return None if served is None else served.reference

  async def run_shadow(served, examples: np.ndarray, k: int) -> None:
    """The shadow's predictions for the examples, recorded; its errors only counted."""
    start = time.perf_counter()
    try:
      logits = await asyncio.wrap_future(served.batcher.submit(examples))
      if state['store'] is not None:
        state['store'].record(records_of(artifact.top_k(logits, served.class_names, k),
                                         examples, served, time.perf_counter() - start))
    except Exception:  # Never the client's problem.
      metrics.shadow_failed()
    finally:
      served.in_flight -= 1

  @app.post('/predict', openapi_extra={'requestBody': {'required': True, 'content': {
      'application/json': {'schema': PredictRequest.model_json_schema()}}}})
  async def predict(request: Request):
    """Top-k labels with probabilities for each example, most probable first, an id for each
    prediction (for /v1/feedback) and the version that answered."""
    start, status = time.perf_counter(), 200
    metrics.started()
    served = None
    try:
      parsed = await read_body(request)
      examples = examples_of(parsed)
      routing = table.routing  # One table for the whole request.
      served = routing.pick(request.headers.get('x-request-id') or uuid.uuid4().hex)
      served.in_flight += 1
      if (shadow := routing.shadow) is not None:
        shadow.in_flight += 1
        task = asyncio.create_task(run_shadow(shadow, examples, parsed.top_k))
        shadows.add(task)
        task.add_done_callback(shadows.discard)
      logits = await asyncio.wrap_future(served.batcher.submit(examples))
      top_k = artifact.top_k(logits, served.class_names, parsed.top_k)
      records = records_of(top_k, examples, served, time.perf_counter() - start)
      if state['store'] is not None:
        state['store'].record(records)
      metrics.answered_by(served.version)
      # Serialised here: FastAPI's generic encoder would walk every record again.
      return Response(orjson.dumps({'predictions': top_k,
                                    'prediction_ids': [r.prediction_id for r in records],
                                    'model_version': served.version}),
                      media_type='application/json',
                      headers={'X-Model-Version': str(served.version)})
    except InputError as e:
      status = 422
      return JSONResponse({'error': str(e)}, status_code=status)
    except BadRequest as e:
      status = e.status
      return JSONResponse({'error': str(e)}, status_code=status)
    finally:
      if served is not None:
        served.in_flight -= 1
      metrics.finished(status, time.perf_counter() - start)

  @app.get('/healthz')
  async def healthz():
    return {'status': 'ok'}

  @app.get('/readyz')
  async def readyz():
    if 'ready' not in state:
      return JSONResponse({'status': 'warming up'}, status_code=503)
    return {'status': 'ready', 'buckets': list(buckets),
            'versions': list(table.routing.state.loaded)}

  @app.get('/metrics', response_class=PlainTextResponse)
  async def metrics_page():
    text = metrics.text()
    if (monitor := state.get('monitor')) is not None:
      try:
        text += gauges(await asyncio.to_thread(monitor.snapshot, table.routing.state))
      except Exception as e:  # A failing store costs the gauges, not the page.
        text += f'# monitoring gauges unavailable: {type(e).__name__}\n'
    return text

  @app.get('/', response_class=HTMLResponse)
  async def demo():
    with open(DEMO_PAGE, encoding='utf-8') as f:
      page = f.read().replace('{{INPUT_KIND}}', reader.kind)
    # Inside <script>: JSON with '<' escaped cannot close the element.
    names = orjson.dumps(class_names()).decode().replace('<', '\\u003c')
    return page.replace('{{CLASS_NAMES}}', names)

  def class_names() -> list[str]:
    champion = table.routing.served[table.routing.state.champion]
    return champion.class_names or [str(c) for c in range(champion.model.exported.out_avals[0]
                                                          .shape[-1])]

  add_version_routes(app, table, token, gate)
  add_monitor_routes(app, lambda: state.get('monitor'), lambda: table.routing.state)
  add_feedback_route(app, lambda: state.get('store'), class_names)
  app.state.metrics, app.state.versions = metrics, table
  return app
