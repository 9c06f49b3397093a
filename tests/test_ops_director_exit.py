"""The one mapping of director errors to an objmail command's message and exit code."""

from __future__ import annotations

import argparse
import io

import pytest

from director.errors import (
    BlobCorrupt,
    IndexLayoutMismatch,
    IndexUnavailable,
    RegistryError,
    RemoveRefused,
    UnknownNode,
)
from ops.cli import EX_CONFIG, EX_DATAERR, EX_UNAVAILABLE, CommandContext
from ops.config import Config
from ops.director_exit import DIRECTOR_FAILURES, director_exit


def context() -> tuple[CommandContext, io.StringIO]:
    ctx = CommandContext(argparse.Namespace(), Config(), None, {})
    ctx.err = err = io.StringIO()
    return ctx, err


@pytest.mark.parametrize(("exc", "code", "line"), [
    pytest.param(IndexUnavailable("redis is down"), EX_UNAVAILABLE,
                 "objmail: redis is down", id="index-unavailable"),
    pytest.param(IndexLayoutMismatch("1024 buckets, not 4096"), EX_CONFIG,
                 "objmail: configuration error: 1024 buckets, not 4096", id="layout-mismatch"),
    pytest.param(RegistryError("address taken"), EX_DATAERR, "objmail: address taken",
                 id="registry-error"),
    pytest.param(UnknownNode("no node os9"), EX_DATAERR, "objmail: no node os9",
                 id="unknown-node"),
])
def test_each_failure_has_its_code_and_one_line(exc: Exception, code: int, line: str) -> None:
    """director_exit writes one line naming the error and returns its sysexits code; an
    unknown node counts as a registry error."""
    ctx, err = context()
    assert isinstance(exc, DIRECTOR_FAILURES)
    assert director_exit(ctx, exc) == code
    assert err.getvalue() == line + "\n"


def test_an_error_it_does_not_map_is_raised_again() -> None:
    """An error outside DIRECTOR_FAILURES is not turned into an exit code: it propagates."""
    ctx, err = context()
    exc = BlobCorrupt("bad copy")
    assert not isinstance(exc, DIRECTOR_FAILURES)
    with pytest.raises(BlobCorrupt):
        director_exit(ctx, exc)
    assert err.getvalue() == ""


def test_remove_refused_is_a_registry_error_callers_catch_first() -> None:
    """RemoveRefused falls under DIRECTOR_FAILURES, so node remove must catch it before."""
    assert issubclass(RemoveRefused, DIRECTOR_FAILURES)
