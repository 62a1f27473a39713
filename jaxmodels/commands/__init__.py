"""The `jaxmodels` command's subcommands, one module each with `add_arguments(parser)` and
`main(args) -> int`: thin command lines over the stages (serve, compress, explain), which
they reach through the library's functions. `jaxmodels.console` lists them."""

__all__ = []  # Each command is its module; `jaxmodels.console` imports them by name.
