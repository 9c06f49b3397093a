"""The one way an objmail daemon runs (objstored, directord, imapd), as Swift's
``run_daemon``.

Theory of operation.  A daemon's ``main(argv)`` calls :func:`run_daemon` with its argument
parser (built by :func:`arg_parser`: the common options plus its own), a ``configure``
function (arguments -> config, raising :class:`~runtime.config.ConfigError`) and a
``serve`` function (config -> exit status).  :func:`run_daemon`

1. parses the arguments and sets up logging (``--log-format text|json``,
   ``--log-level``) before anything else, so that every later message, a config error
   included, comes out in the chosen format;
2. runs ``configure`` and ``serve``, turning what they raise into a sysexits status
   (:func:`exit_code`): 78 for a bad configuration, 69 when a dependency (PostgreSQL,
   Redis Cluster) cannot be reached at start-up, 71 when the system refuses something
   (a port or a lock is taken), 70 for anything else (a bug: logged with its traceback).

``serve`` usually builds the daemon's service object and hands its ``start``/``stop`` to
:func:`run_reactor`, which runs ``start`` once the reactor runs, stops the reactor with
the matching status if ``start`` fails, and runs ``stop`` before the reactor shuts down:
on SIGTERM or SIGINT (Twisted's signal handlers stop the reactor), ``stop`` closes the
ports, lets connections finish and closes the clients, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from runtime import errors as kinds
from runtime import logs
from runtime.config import ConfigError, find_config_path, load

__all__ = ["EX_CONFIG", "EX_OK", "EX_OSERR", "EX_SOFTWARE", "EX_UNAVAILABLE",
           "StartError", "Unavailable", "arg_parser", "as_deferred", "exit_code",
           "load_config", "replace_section", "run_daemon", "run_reactor"]

log = logging.getLogger(__name__)

# sysexits.h
EX_OK: Final = 0
EX_UNAVAILABLE: Final = 69
EX_SOFTWARE: Final = 70
EX_OSERR: Final = 71
EX_CONFIG: Final = 78

C = TypeVar("C")


class StartError(Exception):
    """The daemon cannot start for a reason that is not its configuration.

    :param code: the exit status (default 71, EX_OSERR: a port or a lock is taken).
    """

    code: int = EX_OSERR

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class Unavailable(StartError):
    """A service the daemon needs (PostgreSQL, Redis Cluster) cannot be reached: 69."""

    code = EX_UNAVAILABLE


def arg_parser(prog: str, description: str, *, metrics_key: str) -> argparse.ArgumentParser:
    """A parser with the options every daemon has; the daemon adds its own.

    :param metrics_key: the config key ``--metrics-listen`` overrides.
    """
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", help="objmail.toml (default: $OBJMAIL_CONFIG, ./objmail.toml, "
                                     "./var/objmail.toml)")
    ap.add_argument("--log-format", choices=logs.FORMATS, default="text",
                    help="text (default) or json: one object per line with ts, level, "
                         "logger, pid, msg and, for errors, exc")
    ap.add_argument("--log-level", choices=logs.LEVELS, default="info")
    ap.add_argument("--metrics-listen", metavar="HOST:PORT",
                    help=f"where to serve Prometheus metrics (GET /metrics), '' for nowhere "
                         f"(default: {metrics_key})")
    return ap


def load_config(cls: type[C], args: argparse.Namespace) -> C:
    """The config file ``--config`` (or the usual places) names, read into ``cls``, with
    the environment's overrides.

    :raises ConfigError: the file is missing or holds a bad value (named by its key).
    """
    return load(cls, find_config_path(args.config, os.environ, Path.cwd()), os.environ)


def replace_section(config: C, section: str, changes: Mapping[str, Any]) -> C:
    """``config`` with some keys of one section replaced (command-line overrides).

    :raises ConfigError: a replaced value is invalid; the key is ``section.name``.
    """
    if not changes:
        return config
    try:
        replaced = dataclasses.replace(getattr(config, section), **changes)
    except ConfigError as exc:
        raise ConfigError(f"{section}.{exc.key}", exc.message) from None
    return dataclasses.replace(config, **{section: replaced})  # type: ignore[type-var]


def exit_code(exc: BaseException, unavailable: tuple[type[BaseException], ...] = ()) -> int:
    """The sysexits status for what stopped a daemon from starting.

    Errors of a kind (:mod:`runtime.errors`) say it themselves: misconfigured (schema not
    migrated, index layout, key file) is 78, unavailable (PostgreSQL, Redis Cluster) 69.

    :param unavailable: more exceptions meaning "a dependency cannot be reached".
    """
    from twisted.internet.error import BindError

    if isinstance(exc, ConfigError | kinds.Misconfigured):
        return EX_CONFIG
    if isinstance(exc, StartError):
        return exc.code
    if isinstance(exc, kinds.Unavailable) or (unavailable and isinstance(exc, unavailable)):
        return EX_UNAVAILABLE
    if isinstance(exc, OSError | BindError):  # CannotListenError is a BindError
        return EX_OSERR
    return EX_SOFTWARE


def report(name: str, exc: BaseException, code: int) -> None:
    """Log why ``name`` did not start, in the configured log format."""
    log = logging.getLogger(name.split()[0])  # the daemon's logger: "objstored worker 1"
    if code == EX_CONFIG:
        log.error("%s: bad configuration: %s", name, exc)
    elif code == EX_SOFTWARE:
        log.error("%s cannot start: %s", name, exc, exc_info=exc)
    else:
        log.error("%s cannot start: %s", name, exc)


def run_daemon(name: str, argv: Sequence[str] | None, parser: argparse.ArgumentParser,
               configure: Callable[[argparse.Namespace], C], serve: Callable[[C], int], *,
               unavailable: tuple[type[BaseException], ...] = ()) -> int:
    """Parse ``argv``, set up logging, configure and serve; the exit status."""
    args = parser.parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    try:
        config = configure(args)
        return serve(config)
    except Exception as exc:
        code = exit_code(exc, unavailable)
        report(name, exc, code)
        return code


def as_deferred(result: object) -> Any:
    """A Deferred for what a start or stop function returned: a Deferred as it is, a
    coroutine run on the asyncio loop the reactor shares, anything else as a result."""
    from twisted.internet import defer

    if isinstance(result, defer.Deferred):
        return result
    if inspect.isawaitable(result):
        return defer.Deferred.fromFuture(asyncio.ensure_future(result))
    return defer.succeed(result)


def run_reactor(reactor: Any, name: str, start: Callable[[], object],
                stop: Callable[[], object], *,
                unavailable: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``reactor`` with ``start`` once it runs and ``stop`` before it shuts down
    (SIGTERM, SIGINT, or a failed start); the exit status.

    ``start`` and ``stop`` may return a Deferred or a coroutine.  When ``start`` fails,
    the status says why (:func:`exit_code`) and the reactor stops, running ``stop`` to
    close what was opened.
    """
    from twisted.internet import defer

    status = [EX_OK]

    def failed(reason: Any) -> None:
        status[0] = exit_code(reason.value, unavailable)
        report(name, reason.value, status[0])
        reactor.stop()

    def begin() -> None:
        try:
            d = as_deferred(start())
        except Exception:
            d = defer.fail()
        d.addErrback(failed)

    def end() -> Any:
        try:
            d = as_deferred(stop())
        except Exception:
            d = defer.fail()
        d.addErrback(lambda f: log.error("%s: unclean stop: %s", name, f.getTraceback()))
        return d

    reactor.callWhenRunning(begin)
    reactor.addSystemEventTrigger("before", "shutdown", end)
    reactor.run()
    return status[0]
