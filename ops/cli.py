"""The ``objmail`` command: one entry point, a subcommand per operation.

Each subcommand lives in its own module under ``ops/`` and registers itself
through :data:`COMMAND_MODULES`; this module only parses arguments, loads the config
once and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ops.config import Config, ConfigError, find_config_path, load_config

# The exit codes live with the one error map; commands and tests also take them from here.
from ops.exitcodes import EX_CONFIG as EX_CONFIG
from ops.exitcodes import EX_DATAERR as EX_DATAERR
from ops.exitcodes import EX_INTERRUPTED as EX_INTERRUPTED
from ops.exitcodes import EX_NOUSER as EX_NOUSER
from ops.exitcodes import EX_OK as EX_OK
from ops.exitcodes import EX_SIGPIPE as EX_SIGPIPE
from ops.exitcodes import EX_SOFTWARE as EX_SOFTWARE
from ops.exitcodes import EX_TEMPFAIL as EX_TEMPFAIL
from ops.exitcodes import EX_UNAVAILABLE as EX_UNAVAILABLE
from ops.exitcodes import EX_USAGE as EX_USAGE
from runtime.secrets import Credentials, load_credentials


class CommandContext:
    """What every subcommand receives: parsed args, the config, where to print."""

    def __init__(self, args: argparse.Namespace, config: Config, config_path: Path | None,
                 environ: dict[str, str]) -> None:
        self.args = args
        self.config = config
        self.config_path = config_path
        self.environ = environ
        self.out = sys.stdout
        self.err = sys.stderr
        self._credentials: Credentials | None = None

    @property
    def credentials(self) -> Credentials:
        """The Redis and PostgreSQL secrets the config names, read on first use (commands
        that connect to neither, such as ``dev down``, never need them).

        :raises ConfigError: a secret file is missing or not private.
        """
        if self._credentials is None:
            self._credentials = load_credentials(self.config.cluster)
        return self._credentials

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def warn(self, message: str) -> None:
        print(message, file=self.err, flush=True)


Handler = Callable[[CommandContext], int]


#: Modules that each add one subcommand with ``register(subparsers)``.
COMMAND_MODULES = (
    "ops.dev_command",
    "ops.node_command",
    "ops.where_command",
    "ops.db_command",
    "ops.user_command",
    "ops.deliver_command",
    "ops.stats_command",
    "ops.status_command",
    "ops.repair_command",
    "ops.level_command",
    "ops.tier_command",
    "ops.inventory_command",
    "ops.index_command",
    "ops.gc_command",
    "ops.scrub_command",
    "ops.import_command",
    "ops.keys_command",
)


def _register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)


CONFIG_HELP = ("config file (default: $OBJMAIL_CONFIG, ./objmail.toml, ./var/objmail.toml, "
               "else built-in defaults)")


def _accept_config_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``--config`` follow any subcommand too (``objmail user add --config F``).

    The subparsers' default is SUPPRESS, so an option given before the subcommand is
    not overwritten by a subparser that did not see it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                                       help=CONFIG_HELP)
                _accept_config_everywhere(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="objmail", description="objmail: operate a distributed mail store.")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_all(sub)
    _accept_config_everywhere(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        path = find_config_path(args.config, environ, Path.cwd())
        config = load_config(path, environ)
    except ConfigError as exc:
        print(f"objmail: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    ctx = CommandContext(args, config, path, environ)
    handler: Handler = args.handler
    try:
        return handler(ctx)
    except ConfigError as exc:
        print(f"objmail: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        print("objmail: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``objmail user list | head``): stop quietly, as cat does.
        # Python would report the failed flush of stdout at exit, so point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
