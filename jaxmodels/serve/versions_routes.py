"""The admin routes over a server's versions, JSON in and out:

  GET  /v1/versions                      each version: its role (champion, canary with its
                                         percent, shadow, loaded, available) and summary
  POST /v1/versions/{v}/load | unload | shadow
  POST /v1/versions/{v}/promote  (optional body {"force": true}) through the promotion gate
                                 (`promotion_gate`): 409 with both numbers when the evidence
                                 does not support it; each promotion is recorded with its
                                 evidence in REPO/promotions.jsonl, an override as forced
  POST /v1/versions/{v}/canary  {"percent": p}
  POST /v1/rollback

The POST routes need `Authorization: Bearer <token>` (the token of --admin-token-file):
none -> 401, another -> 403; a server started without a token file answers them 403. GET
/v1/versions is open, like /metrics: it shows what serves, changes nothing. A change that
cannot apply answers 404 / 409 / 422 {"error"} and leaves the serving state as it was.
"""
import asyncio
import hmac
import time

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jaxmodels.serve import model_repository
from jaxmodels.serve.model_repository import RepositoryError
from jaxmodels.serve.promotion_gate import GateRefused, PromotionGate
from jaxmodels.serve.served_versions import VersionTable

ACTIONS = {'load': model_repository.load, 'unload': model_repository.unload,
           'promote': model_repository.promote, 'shadow': model_repository.shadow,
           'canary': model_repository.canary}
ADMIN_OFF = 'admin routes are off: start the server with --admin-token-file'


def read_token(path: str | None) -> str | None:
  """The admin token in the file at `path` (surrounding whitespace dropped)."""
  if path is None:
    return None
  try:
    with open(path, encoding='utf-8') as f:
      token = f.read().strip()
  except OSError as e:
    raise model_repository.BadValue(f'{path}: {e.strerror}', key='admin_token_file') from None
  if not token:
    raise model_repository.BadValue(f'{path} holds no admin token', key='admin_token_file')
  return token


def role(state: model_repository.ServingState, version: int) -> dict:
  if version == state.champion:
    return {'state': 'champion'}
  if version == state.canary:
    return {'state': 'canary', 'percent': state.canary_percent}
  if version == state.shadow:
    return {'state': 'shadow'}
  return {'state': 'loaded' if version in state.loaded else 'available'}


def add_version_routes(app: FastAPI, table: VersionTable, token: str | None,
                       gate: PromotionGate | None = None) -> None:
  gate = gate or PromotionGate()
  error = lambda status, message: JSONResponse({'error': message}, status_code=status)

  def refused(request: Request) -> JSONResponse | None:
    """The answer to a request without the admin token; None when it has it."""
    if token is None:
      return error(403, ADMIN_OFF)
    scheme, _, given = request.headers.get('authorization', '').partition(' ')
    if scheme.lower() != 'bearer' or not given.strip():
      return error(401, 'an admin route needs the header "Authorization: Bearer <token>"')
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
      return error(403, 'wrong admin token')
    return None

  async def apply(request: Request, transition, *args):
    if (answer := refused(request)) is not None:
      return answer
    try:
      saved = await table.change(transition, *args)
    except RepositoryError as e:
      return error(e.http_status, str(e))
    return {'serving': saved.to_json()}

  @app.get('/v1/versions')
  async def list_versions():
    state = table.routing.state
    versions = await asyncio.to_thread(table.repo.versions)
    listed = []
    for version in versions:
      try:
        summary = await asyncio.to_thread(table.repo.version_summary, version)
      except (OSError, ValueError, RepositoryError) as e:  # Broken or just removed.
        summary = {'version': version, 'error': f'{type(e).__name__}: {e}'}
      listed.append({**summary, **role(state, version)})
    return {'versions': listed, 'serving': state.to_json()}

  @app.post('/v1/versions/{version}/{action}')
  async def change_version(version: str, action: str, request: Request):
    if action not in ACTIONS:
      return error(404, f'no action {action!r}: one of {", ".join(ACTIONS)}')
    if (answer := refused(request)) is not None:  # Before the body is looked at.
      return answer
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
      return error(404, f'{version!r} is not a version number')
    number, args = int(version), ()
    if action == 'load':
      args = (await asyncio.to_thread(table.repo.versions),)
    elif action == 'canary':
      try:
        body = orjson.loads(await request.body())
      except orjson.JSONDecodeError as e:
        return error(400, f'the body is not valid JSON ({e})')
      if not isinstance(body, dict) or set(body) != {'percent'}:
        return error(422, 'a canary takes the body {"percent": p}, 0 < p < 100')
      args = (body['percent'],)
    elif action == 'promote':
      return await promote(request, number)
    return await apply(request, ACTIONS[action], number, *args)

  async def promote(request: Request, version: int):
    raw = await request.body()
    try:
      body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as e:
      return error(400, f'the body is not valid JSON ({e})')
    if not isinstance(body, dict) or set(body) - {'force'} or not isinstance(
        body.get('force', False), bool):
      return error(422, 'promote takes no body, or {"force": true} to override the gate')
    async with table.gate_lock:  # One promotion at a time: the gate sees the champion it replaces.
      champion = table.routing.state.champion
      try:
        manifests = await asyncio.to_thread(
            lambda: (table.repo.manifest(version),
                     None if champion is None else table.repo.manifest(champion)))
        refused = None
        try:
          evidence = gate.check(version, manifests[0], champion, manifests[1])
        except GateRefused as e:
          if not body.get('force'):
            return JSONResponse({'error': str(e), 'gate': e.evidence}, status_code=409)
          evidence, refused = e.evidence, str(e)
        before = table.routing.state
        saved = await table.change(model_repository.promote, version)
      except RepositoryError as e:
        return error(e.http_status, str(e))
      if saved != before:
        entry = {'at': time.time(), 'version': version, 'previous_champion': champion,
                 'forced': refused is not None, 'evidence': evidence}
        if refused is not None:
          entry['overrode'] = refused
        await asyncio.to_thread(table.repo.record_promotion, entry)
    return {'serving': saved.to_json(), 'gate': evidence, 'forced': refused is not None}

  @app.post('/v1/rollback')
  async def rollback(request: Request):
    if (answer := refused(request)) is not None:
      return answer
    return await apply(request, model_repository.rollback,
                       await asyncio.to_thread(table.repo.versions))
