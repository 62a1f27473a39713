"""`jaxmodels versions ACTION URL [V]`: the serving state of a running `jaxmodels serve REPO`,
through its /v1 admin routes (stdlib urllib only):

  list URL            each version, its role and summary
  load URL V          compile V and hold it in memory (it takes no traffic yet)
  unload URL V        drop V from memory (not the champion)
  canary URL V --percent P   V answers P % of the requests
  shadow URL V        V sees a copy of the requests, its answers recorded, never returned
  promote URL V       V becomes the champion, through the promotion gate (--force overrides
                      it, and the override is recorded)
  rollback URL        the champion before serves again

Prints the server's JSON answer; an error answer is one line and exit code 2."""
import json
import urllib.error
import urllib.request

from jaxmodels.errors import InputError

ACTIONS = {'list': 'each version, its role and summary',
           'load': 'compile a version and hold it in memory',
           'unload': 'drop a version from memory', 'canary': 'a version answers a share',
           'shadow': 'a version sees a copy of the requests',
           'promote': 'a version becomes the champion',
           'rollback': 'the previous champion serves again'}


def add_arguments(parser) -> None:
  actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
  for action, help_text in ACTIONS.items():
    sub = actions.add_parser(action, help=help_text, description=help_text)
    sub.add_argument('url', help='the server, e.g. http://127.0.0.1:8000')
    if action not in ('list', 'rollback'):
      sub.add_argument('version', type=int)
    if action == 'promote':
      sub.add_argument('--force', action='store_true',
                       help='promote even when the gate refuses (the server records the '
                            'override with its numbers)')
    if action == 'canary':
      sub.add_argument('--percent', type=float, required=True,
                       help='the share of the requests it answers, 0 < P < 100')
    sub.add_argument('--token-file', default=None,
                     help="a file holding the server's admin token (--admin-token-file)")
    sub.add_argument('--timeout', type=float, default=600,
                     help='seconds to wait for the answer (a load compiles; default: '
                          '%(default)s)')


def request(url: str, method: str, body=None, token: str | None = None,
            timeout: float = 600) -> dict:
  """The JSON answer of the server; InputError with its one-line error for a non-2xx one."""
  headers = {'Content-Type': 'application/json'}
  if token:
    headers['Authorization'] = f'Bearer {token}'
  data = None if body is None else json.dumps(body).encode()
  try:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method,
                                                       headers=headers), timeout=timeout) as r:
      return json.loads(r.read())
  except urllib.error.HTTPError as e:
    text = e.read().decode(errors='replace')
    try:
      message = json.loads(text)['error']
    except (ValueError, KeyError, TypeError):
      message = text.strip().splitlines()[0] if text.strip() else e.reason
    raise InputError(f'{e.code}: {message}') from None
  except urllib.error.URLError as e:
    raise InputError(f'{url}: {e.reason}') from None


def main(args) -> int:
  token = None
  if args.token_file:
    try:
      with open(args.token_file, encoding='utf-8') as f:
        token = f.read().strip()
    except OSError as e:
      raise InputError(f'{args.token_file}: {e.strerror}', key='token_file') from None
  base = args.url.rstrip('/')
  if args.action == 'list':
    answer = request(f'{base}/v1/versions', 'GET', timeout=args.timeout)
  elif args.action == 'rollback':
    answer = request(f'{base}/v1/rollback', 'POST', token=token, timeout=args.timeout)
  else:
    body = {'percent': args.percent} if args.action == 'canary' else None
    if args.action == 'promote' and args.force:
      body = {'force': True}
    answer = request(f'{base}/v1/versions/{args.version}/{args.action}', 'POST', body, token,
                     args.timeout)
  print(json.dumps(answer, indent=2))
  return 0
