"""Logging of the daemons: plain text for people, JSON lines for log shippers.

:func:`setup` is called once by :func:`runtime.daemon.run_daemon`, before the config is
read, so that even a config error is logged in the chosen format.  Twisted's own log
events are routed into the standard library's logging (:func:`route_twisted`), so one
handler writes everything.

A JSON line has exactly these fields, in this order, so that a shipper can rely on them:
``ts`` (UTC, ISO 8601 with milliseconds), ``level`` (lower case), ``logger``, ``pid``,
``msg``, and ``exc`` (the formatted traceback) only when the record carries one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Final

__all__ = ["FORMATS", "LEVELS", "TEXT_FORMAT", "JsonFormatter", "route_twisted", "setup"]

#: The ``--log-format`` choices.
FORMATS: Final = ("text", "json")
#: The ``--log-level`` choices.
LEVELS: Final = ("debug", "info", "warning", "error")
#: The text format the daemons have always written.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the stable field set of the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        fields: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        # One line per record whatever the message holds: json.dumps escapes newlines.
        return json.dumps(fields, ensure_ascii=False, default=str)


def setup(fmt: str = "text", level: str = "info", stream: IO[str] | None = None) -> None:
    """Send every log record of this process to ``stream`` (stderr) in ``fmt``.

    Replaces the handler an earlier call installed, so calling it again does not
    duplicate lines; handlers installed by others (a test runner's) are left alone.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class _Handler(logging.StreamHandler):
    """The handler :func:`setup` installs (so that it can tell it from others)."""


def route_twisted() -> None:
    """Let Twisted's log events through the standard library's logging (Twisted would
    otherwise buffer them, then write its own format)."""
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo([STDLibLogObserver()],  # type: ignore[list-item]
                                     redirectStandardIO=False)
