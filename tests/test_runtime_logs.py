"""The daemons' log formats: JSON lines with a stable field set, and text as before."""

from __future__ import annotations

import io
import json
import logging

import pytest

from runtime.logs import JsonFormatter, setup

FIELDS = ["ts", "level", "logger", "pid", "msg"]


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("objstored", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_line_has_the_stable_fields_in_order() -> None:
    """A record becomes one JSON line with ts, level, logger, pid and msg, in that order;
    a message with newlines stays on one line."""
    line = JsonFormatter().format(record("two\nlines from %s", "x"))
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields) == FIELDS
    assert fields["level"] == "warning" and fields["logger"] == "objstored"
    assert fields["msg"] == "two\nlines from x" and isinstance(fields["pid"], int)
    assert fields["ts"].endswith("Z") and fields["ts"][10] == "T"


def test_json_line_carries_the_traceback_as_exc() -> None:
    """A record with an exception adds exc, the formatted traceback, and nothing else."""
    fields = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert list(fields) == [*FIELDS, "exc"]
    assert "RuntimeError: boom" in fields["exc"]


def test_setup_replaces_its_own_handler_only() -> None:
    """Calling setup twice leaves one handler of its own (no doubled lines), keeps other
    handlers, and applies the level."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    other = logging.NullHandler()
    root.addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    try:
        setup("text", "info", first)
        setup("json", "warning", second)
        logging.getLogger("t").info("hidden")
        logging.getLogger("t").warning("shown")
        assert first.getvalue() == ""
        assert [json.loads(x)["msg"] for x in second.getvalue().splitlines()] == ["shown"]
        assert other in root.handlers
        with pytest.raises(ValueError):
            setup("xml")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
