"""The monitoring routes: GET /v1/monitor (JSON, `monitor.Monitor.snapshot`) and GET /monitor, a
page that draws the same document (live accuracy per version over time, the confidence
histogram against the reference, drift p-values over time, the feedback's confusion matrix
and the serving state). Both are open, like /metrics: they show, they change nothing. A
server without a prediction store answers 409."""
import asyncio
import os

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse

from jaxmodels.errors import one_line

MONITOR_PAGE = os.path.join(os.path.dirname(__file__), 'monitor.html')
NO_STORE = ('this server records no predictions, so it has nothing to monitor: start it with '
            '--store URL (a repository records into REPO/monitor.db)')


def add_monitor_routes(app: FastAPI, monitor_of, state_of) -> None:
  """`monitor_of()`: the `monitor.Monitor`, or None without a store; `state_of()`: the serving
  state now."""

  @app.get('/v1/monitor')
  async def monitor_document():
    monitor = monitor_of()
    if monitor is None:
      return JSONResponse({'error': NO_STORE}, status_code=409)
    try:
      return await asyncio.to_thread(monitor.snapshot, state_of())
    except Exception as e:  # A failing store: say so, and keep serving predictions.
      return JSONResponse({'error': f'the prediction store cannot be read ({type(e).__name__}: '
                                    f'{one_line(e)})'}, status_code=503)

  @app.get('/monitor', response_class=HTMLResponse)
  async def monitor_page():
    with open(MONITOR_PAGE, encoding='utf-8') as f:
      return f.read()
