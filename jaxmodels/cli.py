"""Command-line entry for experiments: `--config` (ml_collections), `--config.x=value`
overrides, `--workdir`; user errors become one line on stderr and exit code 2.

Exit codes: 0 done; 2 bad input (config, data, workdir, checkpoint); 3 the loss
became NaN/inf; 75 preempted (SIGTERM/SIGINT: a checkpoint was saved, run the same
command to resume); 130 interrupted without a checkpoint.
"""
import difflib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable

import ml_collections

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: try again (schedulers requeue on it).
EXIT_INTERRUPTED = 130


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the Python file at `path`; 'file.py:variant' calls get_config('variant')
  (ml_collections' convention for a file with several recipes)."""
  path, _, variant = path.partition(':')
  spec = importlib.util.spec_from_file_location('_jaxmodels_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def _config_argument(argv, default: str) -> str:
  """The --config value in argv (--config=X or --config X), else `default`."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return default


def flatten(config, prefix: str = '') -> dict:
  """{'train.batch_size': 128, ...} for every leaf of a ConfigDict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_overrides(config, argv) -> None:
  """ConfigError (one line) for the first `--config.<key>` in argv that names no field."""
  from jaxmodels.errors import ConfigError
  known = flatten(config)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    if key in known or any(k.startswith(key + '.') for k in known):
      continue
    close = difflib.get_close_matches(key, known, n=3)
    hint = f'did you mean {" or ".join(close)}?' if close else 'run with --help to list the keys'
    raise ConfigError(f'unknown config key {key!r}; {hint}')


def config_help(config) -> str:
  lines = ['Experiment config (ml_collections). Override any field with --config.<key>=<value>;',
           'the fields and their defaults:']
  lines += [f'  {key} = {value!r}' for key, value in flatten(config).items()]
  return '\n'.join(lines)


def usage(doc: str, default_workdir: str, config) -> str:
  return '\n'.join([
      doc.strip(), '', 'flags:',
      f'  --workdir: output directory (default: {default_workdir!r}): TensorBoard events,',
      '    metrics.jsonl, PNG plots and summary.json/txt. Created if missing.',
      '  --config: a config file, or file.py:variant for one of its recipes (default: this',
      '    experiment\'s configs/<name>.py).',
      '  --coordinator_address, --num_processes, --process_id: join a multi-process JAX',
      '    cluster (GPU clusters without SLURM). TPU pods and SLURM jobs need none of them.',
      '  --compilation_cache: directory of the persistent compilation cache (default',
      '    $JAXMODELS_COMPILATION_CACHE or ~/.cache/jaxmodels/xla; \'off\' disables it).',
      '  --helpfull: every flag, including absl\'s own.', '',
      config_help(config), '',
      f'exit codes: 0 done; {EXIT_BAD_INPUT} bad input (config, data, workdir, checkpoint); '
      f'{EXIT_DIVERGED} loss became NaN/inf;',
      f'  {EXIT_PREEMPTED} preempted by SIGTERM/SIGINT after saving a checkpoint (run the same '
      f'command to resume); {EXIT_INTERRUPTED} interrupted.'])


def run(train_fn: Callable, experiment_file: str) -> None:
  """Parses flags and calls `train_fn(config, workdir)`; never returns.

  experiment_file: the experiment's `__file__`. Its config is
  `configs/<name>.py` beside it and the default workdir is `runs/<name>`.
  """
  name = os.path.splitext(os.path.basename(experiment_file))[0]
  config_file = os.path.join(os.path.dirname(os.path.abspath(experiment_file)), 'configs',
                             f'{name}.py')
  default_workdir = os.path.join('runs', name)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up chatter.
  # JAX logs each accelerator backend it fails to find (libtpu, CUDA) at INFO.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  from absl import app, flags
  from absl import logging as absl_logging
  from ml_collections import config_flags

  from jaxmodels.errors import USER_ERRORS, NonFiniteError, Preempted

  defaults = load_config_file(_config_argument(sys.argv[1:], config_file))
  if {'-h', '--help', '-?', '--helpshort'} & set(sys.argv[1:]):
    # absl's --help shows only flags defined in __main__ and exits 1; this lists ours and exits 0.
    print(usage(sys.modules['__main__'].__doc__ or '', default_workdir, defaults))
    sys.exit(0)
  try:
    check_overrides(defaults, sys.argv[1:])
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)

  config_flag = config_flags.DEFINE_config_file('config', config_file, config_help(defaults),
                                                lock_config=True)
  workdir_flag = flags.DEFINE_string(
      'workdir', default_workdir, 'Directory for TensorBoard events, metrics.jsonl, plots and '
      'summary.json/txt. Created if missing.')

  coordinator_flag = flags.DEFINE_string(
      'coordinator_address', None, 'host:port of process 0, for a multi-process run.')
  num_processes_flag = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
  process_id_flag = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
  cache_flag = flags.DEFINE_string(
      'compilation_cache', None, 'Persistent compilation cache directory (default '
      '$JAXMODELS_COMPILATION_CACHE or ~/.cache/jaxmodels/xla); off disables it.')

  def main(argv):
    # Libraries (orbax above all) log dozens of INFO lines per checkpoint; keep ours and warnings.
    absl_logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= logging.WARNING or f'{os.sep}jaxmodels{os.sep}' in
        record.pathname)
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    from jaxmodels import parallel
    from jaxmodels.compilation_cache import enable_compilation_cache
    enable_compilation_cache(cache_flag.value)
    parallel.initialize_distributed(coordinator_flag.value, num_processes_flag.value,
                                    process_id_flag.value)
    try:
      train_fn(config_flag.value, workdir_flag.value)
    except USER_ERRORS as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(EXIT_BAD_INPUT)
    except NonFiniteError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(EXIT_DIVERGED)
    except Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
      print('interrupted', file=sys.stderr)
      sys.exit(EXIT_INTERRUPTED)

  app.run(main)
