"""`jaxmodels serve REPO|DIR --port 8000`: the versions of a model repository, or one exported
model, over HTTP (FastAPI + uvicorn, the `serve` extra; the app itself is
`jaxmodels.serve.app`); a language-model artifact (`export --slots N`) as OpenAI's
completions API (`jaxmodels.serve.lm_app`). The web stack is imported only when
the command runs, so the other commands work with the base install."""
from jaxmodels.errors import InputError


def add_arguments(parser) -> None:
  parser.add_argument('directory', help='a model repository (`export --repo REPO`): its serving '
                                        'state; or one exported model (`export --out DIR`)')
  parser.add_argument('--host', default='127.0.0.1', help='default: %(default)s (loopback)')
  parser.add_argument('--port', type=int, default=8000, help='default: %(default)s')
  parser.add_argument('--max-batch-size', type=int, default=64,
                      help='examples per batch; 1 serves one request at a time (default: '
                           '%(default)s)')
  parser.add_argument('--max-wait-ms', type=float, default=5.0,
                      help='how long a batch waits for more requests (default: %(default)s)')
  parser.add_argument('--max-body-bytes', type=int, default=4 << 20,
                      help='larger request bodies get 413 (default: %(default)s)')
  parser.add_argument('--store', default=None,
                      help='where predictions and feedback are recorded: a SQLite file or a '
                           'SQLAlchemy URL, or off to record nothing (default: REPO/monitor.db '
                           'for a repository; none for one exported model)')
  parser.add_argument('--log-inputs', type=float, default=0.0, metavar='FRACTION',
                      help='the random fraction of examples whose input bytes are recorded '
                           '(their sha256 always is; default: %(default)s)')
  parser.add_argument('--monitor-window', type=int, default=200, metavar='N',
                      help='predictions per drift window of /v1/monitor and /monitor (default: '
                           '%(default)s)')
  parser.add_argument('--drift-correction', choices=('bonferroni', 'fdr'), default='bonferroni',
                      help='how the drift tests of a window are corrected for their number '
                           '(default: %(default)s)')
  parser.add_argument('--promote-margin', type=float, default=1.0, metavar='POINTS',
                      help='accuracy points a retrained version must gain on its held-out '
                           'feedback over the champion to be promoted (default: %(default)s)')
  parser.add_argument('--max-test-drop', type=float, default=1.0, metavar='POINTS',
                      help='accuracy points a promoted version may lose on the original test '
                           'split (default: %(default)s)')
  parser.add_argument('--admin-token-file', default=None,
                      help='a file holding the bearer token of the /v1 admin routes (without '
                           'it they answer 403)')
  lm = parser.add_argument_group('a language-model artifact (its slots are set at export: '
                                 '--slots)')
  lm.add_argument('--max-queue', type=int, default=64, metavar='N',
                  help='requests that wait while every slot is busy; more get 429 (default: '
                       '%(default)s)')
  lm.add_argument('--model-name', default=None,
                  help="the model's id in /v1/models and requests (default: the directory's "
                       'name)')


def main(args) -> int:
  try:
    import uvicorn

    from jaxmodels.serve.app import make_app
    from jaxmodels.serve.lm_app import is_language_model, make_lm_app
    from jaxmodels.serve.promotion_gate import PromotionGate
  except ImportError as e:
    raise InputError(f'serve needs the web stack of the serve extra ({e.name} is missing): '
                     'pip install -e ".[serve]" in the jaxmodels checkout') from None
  if args.max_batch_size < 1 or args.max_wait_ms < 0 or args.max_body_bytes < 1:
    raise InputError('max_batch_size and max_body_bytes must be at least 1, max_wait_ms at '
                     'least 0', key='max_batch_size')
  if is_language_model(args.directory):
    if args.max_queue < 0:
      raise InputError(f'max_queue must be at least 0, got {args.max_queue}', key='max_queue')
    app = make_lm_app(args.directory, max_queue=args.max_queue, model_name=args.model_name,
                      max_body_bytes=args.max_body_bytes)
  else:
    app = make_app(args.directory, max_batch_size=args.max_batch_size,
                   max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                   store=args.store, log_inputs=args.log_inputs,
                   admin_token_file=args.admin_token_file, monitor_window=args.monitor_window,
                   drift_correction=args.drift_correction,
                   gate=PromotionGate(args.promote_margin, args.max_test_drop))
  uvicorn.run(app, host=args.host, port=args.port, log_level='warning',
              timeout_graceful_shutdown=30)
  return 0
