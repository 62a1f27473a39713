"""The `jaxmodels` command: `jaxmodels <command> [arguments]`, `--help` on each.

A command is a module with `add_arguments(parser)` and `main(args) -> int` (the exit
code); `COMMANDS` maps each name to its module and one line of help, imported only when
that command runs. Bad input is one line on stderr and exit code 2.
"""
import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {}
COMMANDS['export'] = ('jaxmodels.commands.export', 'export a finished run as a jax.export artifact')
COMMANDS['predict'] = ('jaxmodels.commands.predict', "an exported model's top-k labels for inputs")
COMMANDS['serve'] = ('jaxmodels.commands.serve', 'serve an exported model over HTTP (batched)')
COMMANDS['versions'] = ('jaxmodels.commands.versions',
                        "a running server's versions: list, load, canary, shadow, promote, "
                        'rollback')
COMMANDS['feedback'] = ('jaxmodels.commands.feedback',
                        'labels for served predictions into the prediction store')
COMMANDS['retrain'] = ('jaxmodels.commands.retrain',
                       "a repository's champion trained further on its users' feedback, as a "
                       'new run to export')
COMMANDS['quantize'] = ('jaxmodels.commands.quantize',
                        'int8 post-training quantisation of a finished run')
COMMANDS['prune-channels'] = ('jaxmodels.commands.prune_channels',
                              'structured channel pruning of a finished CNN run into a new run')
COMMANDS['explain'] = ('jaxmodels.commands.explain',
                       "what a finished run's model looks at: saliency, integrated gradients, "
                       'Grad-CAM, attention maps')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='jaxmodels', description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  for name, (module, help_text) in sorted(COMMANDS.items()):
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(module=module)
    importlib.import_module(module).add_arguments(sub)
  args = parser.parse_args(argv)
  from jaxmodels.errors import USER_ERRORS
  try:
    return importlib.import_module(args.module).main(args)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
