"""The experiments' command line.

    python experiments/mnist.py [--config=FILE.py[:VARIANT]] [--config.KEY=VALUE ...]
                                [--workdir=DIR] [--coordinator_address=HOST:PORT
                                --num_processes=N --process_id=I] [--compilation_cache=DIR]
                                [--sweep=grid|random|optuna --sweep.KEY=SPEC ...]

The config file's `get_config()` (or `get_config(VARIANT)`) gives the config; each
override is parsed as the type of the field it sets and checked against the task's
schema. Library errors name config keys; here they become one line on stderr naming
the flag to change, and an exit code.

Exit codes: 0 done; 2 bad input (config, data, workdir, checkpoint); 3 the loss became
NaN/inf; 75 preempted (SIGTERM/SIGINT: a checkpoint was saved, run the same command to
resume); 130 interrupted without a checkpoint.
"""
import argparse
import importlib.util
import logging
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: try again (schedulers requeue on it).
EXIT_INTERRUPTED = 130


def default_extensions() -> tuple:
  """The extensions every experiment applies (`tasks.extensions.default_extensions`)."""
  from jaxmodels.tasks.extensions import default_extensions as defaults
  return defaults()


def default_config(task):
  """The default config of an experiment of `task` (`tasks.extensions.default_config`)."""
  from jaxmodels.tasks.extensions import default_config as defaults
  return defaults(task)


def load_config_file(path: str):
  """`get_config()` of the Python file at `path`; 'file.py:variant' calls get_config('variant')
  (ml_collections' convention for a file with several recipes). ConfigError if it fails."""
  from jaxmodels.errors import ConfigError
  file, _, variant = path.partition(':')
  if not os.path.isfile(file):
    raise ConfigError(f'no config file {file!r}', key='config')
  try:
    spec = importlib.util.spec_from_file_location('_jaxmodels_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # The file is the user's code: any error is bad input.
    raise ConfigError(f'cannot load config {path!r}: {type(e).__name__}: '
                      f'{" ".join(str(e).split())[:200]}', key='config') from None


def _flag_of(key: str) -> str:
  if key.startswith('sweep.'):
    return f'--{key}'
  return {'workdir': '--workdir', 'config': '--config', 'sweep': '--sweep',
          'sweep_metric': '--sweep_metric'}.get(key, f'--config.{key}')


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One line and exit code 2, like every other bad input.
    from jaxmodels.errors import ConfigError
    raise ConfigError(message)


def _parser(default_workdir: str, config_file: str) -> argparse.ArgumentParser:
  parser = _Parser(add_help=False, allow_abbrev=False)
  parser.add_argument('-h', '--help', action='store_true')
  parser.add_argument('--config', default=config_file)
  parser.add_argument('--workdir', default=default_workdir)
  parser.add_argument('--coordinator_address')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  parser.add_argument('--compilation_cache')
  parser.add_argument('--sweep')
  parser.add_argument('--sweep_trials', type=int, default=8)
  parser.add_argument('--sweep_metric')
  parser.add_argument('--sweep_seed', type=int, default=0)
  return parser


def _overrides(rest: list[str], prefix: str = '--config.') -> list[tuple[str, str]]:
  """(key, text) for each --config.KEY=VALUE (or --config.KEY VALUE) in `rest`; with another
  prefix (--sweep.), those flags instead, leaving the rest to the first call."""
  from jaxmodels.errors import ConfigError
  out, i = [], 0
  while i < len(rest):
    arg = rest[i]
    if not arg.startswith(prefix):
      if prefix == '--config.' and not arg.startswith('--sweep.'):
        raise ConfigError(f'unknown argument {arg!r}: see --help')
      i += 1
      continue
    key, equals, text = arg[len(prefix):].partition('=')
    if not equals:
      if i + 1 == len(rest):
        raise ConfigError(f'{arg} needs a value: {arg}=VALUE', key=key)
      text, i = rest[i + 1], i + 1
    out.append((key, text))
    i += 1
  return out


def usage(doc: str, default_workdir: str, config, schema) -> str:
  return '\n'.join([
      doc.strip(), '', 'flags:',
      '  --workdir=DIR         outputs: TensorBoard events, metrics.jsonl, plots, summary.json /',
      f'                        .txt and checkpoints/ (default {default_workdir}); a second run',
      '                        in the same workdir resumes.',
      '  --config=FILE.py[:VARIANT]  the config file, or one of its recipes.',
      '  --config.KEY=VALUE    override a config field (listed below).',
      '  --coordinator_address=HOST:PORT --num_processes=N --process_id=I',
      '                        join a multi-process JAX cluster (GPU clusters without SLURM;',
      '                        TPU pods and SLURM jobs need none of them).',
      '  --compilation_cache=DIR  persistent compilation cache (default',
      '                        $JAXMODELS_COMPILATION_CACHE or ~/.cache/jaxmodels/xla; off: none).',
      '  --sweep=grid|random|optuna  a hyper-parameter sweep: each trial is a run in',
      '                        WORKDIR/trial_NNNN; run the same command again to resume it.',
      '  --sweep.KEY=SPEC      a swept config field: values V1,V2,... or, for random and',
      '                        optuna, a range log:LOW:HIGH, uniform:LOW:HIGH or int:LOW:HIGH.',
      '  --sweep_trials=N      trials of a random or optuna sweep (default 8).',
      '  --sweep_metric=NAME   the validation metric compared (default checkpoint.best_metric,',
      '                        the way checkpoint.best_mode says); optuna prunes on it.',
      '  --sweep_seed=N        the random and TPE samplers\' seed (default 0).',
      '', 'config fields (the values this config sets):', schema.describe(config), '',
      f'exit codes: 0 done; {EXIT_BAD_INPUT} bad input; {EXIT_DIVERGED} the loss became NaN/inf; '
      f'{EXIT_PREEMPTED} preempted after saving (run again to resume); {EXIT_INTERRUPTED} '
      'interrupted.'])


def _sweep(task, config, schema, args, specs, extensions) -> None:
  from jaxmodels import sweep
  from jaxmodels.errors import ConfigError
  if not args.sweep:
    raise ConfigError('--sweep.KEY flags need --sweep=grid, random or optuna', key='sweep')
  metric = args.sweep_metric or config.checkpoint.best_metric
  direction = 'maximize' if config.checkpoint.best_mode == 'max' else 'minimize'
  if args.sweep_metric and args.sweep_metric != config.checkpoint.best_metric:
    direction = 'minimize' if 'loss' in metric else 'maximize'
  sweep.run_sweep(task, config, schema, args.workdir,
                  [sweep.parse_dimension(key, spec) for key, spec in specs], mode=args.sweep,
                  trials=args.sweep_trials, metric=metric, direction=direction,
                  seed=args.sweep_seed, extensions=extensions)


def run(task, experiment_file: str) -> None:
  """Parses the command line and runs `task`; never returns.

  experiment_file: the experiment's `__file__`. Its config is `configs/<name>.py`
  beside it and the default workdir is `runs/<name>`.
  """
  from jaxmodels.host_memory import reuse_host_memory
  reuse_host_memory()  # Before jax's CPU threads take their malloc arenas.
  name = os.path.splitext(os.path.basename(experiment_file))[0]
  config_file = os.path.join(os.path.dirname(os.path.abspath(experiment_file)), 'configs',
                             f'{name}.py')
  default_workdir = os.path.join('runs', name)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up chatter.
  # Libraries (orbax, JAX's backend search) log at INFO; keep warnings and errors.
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  from jaxmodels.errors import USER_ERRORS, NonFiniteError, Preempted
  from jaxmodels.tasks import runner

  try:
    args, rest = _parser(default_workdir, config_file).parse_known_args(sys.argv[1:])
    extensions = default_extensions()
    schema = runner.schema_of(task, extensions)
    config = load_config_file(args.config)
    if args.help:
      print(usage(sys.modules['__main__'].__doc__ or '', default_workdir, config, schema))
      sys.exit(0)
    overrides = _overrides(rest)
    overridden = schema.apply_overrides(config, overrides)
    from jaxmodels import parallel
    from jaxmodels.compilation_cache import enable_compilation_cache
    enable_compilation_cache(args.compilation_cache)
    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id)
    if args.sweep or _overrides(rest, '--sweep.'):
      _sweep(task, config, schema, args, _overrides(rest, '--sweep.'), extensions)
    else:
      runner.run(task, config, args.workdir, extensions=extensions, overrides=overridden)
  except USER_ERRORS as e:
    flag = f' (set with {_flag_of(e.key)}=...)' if getattr(e, 'key', None) else ''
    print(f'error: {e}{flag}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  except NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_DIVERGED)
  except Preempted as e:
    print(f'{e}: run the same command again', file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  sys.exit(0)
