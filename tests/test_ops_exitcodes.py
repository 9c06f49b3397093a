"""The one CLI error map: every package's errors to one stderr line and a sysexits code;
and objmail commands run against a Redis Cluster and a PostgreSQL that are not there."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from director.codec import CodecError
from director.errors import (
    BadKeyFile,
    BlobCorrupt,
    BlobUnavailable,
    IndexLayoutMismatch,
    IndexUnavailable,
    LeaseHeld,
    LeaseLost,
    RegistryError,
    RemoveRefused,
    UnknownNode,
)
from director.keyring import Keyring, write_keyring
from director.keys import InvalidBlobId
from director.memcache_client import NodeTimeout
from metadata.errors import (
    InvalidName,
    MessageTooBig,
    NoSuchMailbox,
    NoSuchUser,
    OverQuota,
    SchemaError,
    Unavailable,
    UserExists,
)
from metadata.splitter import SkeletonError
from ops.cli import CommandContext
from ops.config import Config
from ops.exitcodes import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_DATAERR,
    EX_NOPERM,
    EX_NOUSER,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    FAILURES,
    exit_code,
    fail,
)
from ops.launcher import free_port


def context() -> tuple[CommandContext, io.StringIO]:
    ctx = CommandContext(argparse.Namespace(), Config(), None, {})
    ctx.err = err = io.StringIO()
    return ctx, err


@pytest.mark.parametrize(("exc", "code"), [
    # unavailable, whichever package noticed it
    pytest.param(Unavailable("PostgreSQL unreachable"), EX_UNAVAILABLE, id="postgres-down"),
    pytest.param(IndexUnavailable("Redis Cluster unreachable"), EX_UNAVAILABLE,
                 id="redis-down"),
    pytest.param(BlobUnavailable("too few object servers"), EX_UNAVAILABLE, id="blobs-down"),
    pytest.param(NodeTimeout("no reply"), EX_UNAVAILABLE, id="node-timeout"),
    pytest.param(ConnectionRefusedError(111, "refused"), EX_UNAVAILABLE, id="os-error"),
    # misconfigured
    pytest.param(SchemaError("run objmail db migrate"), EX_CONFIG, id="schema"),
    pytest.param(IndexLayoutMismatch("1024 buckets, not 4096"), EX_CONFIG, id="layout"),
    pytest.param(BadKeyFile("not 32 bytes"), EX_CONFIG, id="key-file"),
    # invalid input
    pytest.param(RegistryError("address taken"), EX_DATAERR, id="registry"),
    pytest.param(UnknownNode("no node os9"), EX_DATAERR, id="unknown-node"),
    pytest.param(UserExists("taken"), EX_DATAERR, id="user-exists"),
    pytest.param(InvalidName("bad name"), EX_DATAERR, id="invalid-name"),
    pytest.param(InvalidBlobId("not a blob id"), EX_DATAERR, id="blob-id"),
    # limits and corruption
    pytest.param(MessageTooBig(10, 5), EX_DATAERR, id="too-big"),
    pytest.param(BlobCorrupt("every replica is corrupt"), EX_DATAERR, id="blob-corrupt"),
    pytest.param(SkeletonError("truncated skeleton"), EX_DATAERR, id="skeleton"),
    pytest.param(CodecError("decryption failed"), EX_DATAERR, id="codec"),
    # classes with a code of their own
    pytest.param(NoSuchUser("no user"), EX_NOUSER, id="no-user"),
    pytest.param(NoSuchMailbox("no mailbox"), EX_CANTCREAT, id="no-mailbox"),
    pytest.param(OverQuota(1, 2, 3), EX_NOPERM, id="over-quota"),
    pytest.param(LeaseHeld("repair", "h:1:x"), EX_TEMPFAIL, id="lease-held"),
    pytest.param(LeaseLost("lost"), EX_TEMPFAIL, id="lease-lost"),
    pytest.param(RemoveRefused("os1", 1, ("ab",)), EX_TEMPFAIL, id="remove-refused"),
])
def test_each_error_has_its_code_and_one_line(exc: Exception, code: int) -> None:
    """fail() writes one line (command: message) and returns the error's sysexits code."""
    ctx, err = context()
    assert isinstance(exc, FAILURES)
    assert fail(ctx, exc, "objmail x") == code
    line = err.getvalue()
    assert line.startswith("objmail x: ") and line.endswith("\n") and line.count("\n") == 1


def test_unavailable_can_mean_tempfail_for_an_lda() -> None:
    """deliver and import pass unavailable=EX_TEMPFAIL (an MTA retries 75, bounces 69);
    other kinds keep their codes."""
    assert exit_code(Unavailable("down"), unavailable=EX_TEMPFAIL) == EX_TEMPFAIL
    assert exit_code(IndexUnavailable("down"), unavailable=EX_TEMPFAIL) == EX_TEMPFAIL
    assert exit_code(SchemaError("x"), unavailable=EX_TEMPFAIL) == EX_CONFIG


def test_hints_are_appended_to_the_line() -> None:
    """A held lease says to try again later; a caller's hint follows after a ';'."""
    ctx, err = context()
    fail(ctx, LeaseHeld("repair", "h:1:x"))
    fail(ctx, Unavailable("gone"), hint="run gc again to resume")
    assert err.getvalue().splitlines() == [
        "objmail: job repair is being run by another director (h:1:x); try again later",
        "objmail: gone; run gc again to resume"]


def test_a_bug_is_raised_again() -> None:
    """An error of no kind (a bug) is not turned into an exit code: it propagates."""
    ctx, err = context()
    exc = KeyError("oops")
    assert not isinstance(exc, FAILURES)
    assert exit_code(exc) is None
    with pytest.raises(KeyError):
        fail(ctx, exc)
    assert err.getvalue() == ""


def objmail(cwd: Path, *args: str, env: dict[str, str], stdin: str = ""
            ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``objmail ARGS`` as a process in ``cwd`` (no config file: the defaults plus
    ``env``); its result and how long it took."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True,
                            text=True, cwd=cwd, timeout=60, input=stdin,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("OBJMAIL_")} | env)
    return result, time.monotonic() - started


@pytest.mark.system
def test_commands_fail_fast_with_one_line_when_redis_and_postgres_are_down(
        tmp_path: Path) -> None:
    """With Redis Cluster and PostgreSQL on closed ports, commands of each kind exit 69
    within a few seconds (not the 10-30 s retry deadline), saying on one line what is
    unreachable where, without internals such as the batch that failed."""
    redis_ports = [free_port(), free_port()]
    pg_port = free_port()
    env = {"OBJMAIL_REDIS_NODES": ",".join(f"127.0.0.1:{p}" for p in redis_ports),
           "OBJMAIL_PG_DSN": f"postgresql://objmail:secret@127.0.0.1:{pg_port}/objmail"}
    redis_line = (f"objmail: Redis Cluster unreachable at 127.0.0.1:{redis_ports[0]},"
                  f"127.0.0.1:{redis_ports[1]}: Connection refused\n")
    pg_line = (f"PostgreSQL unreachable at 127.0.0.1:{pg_port}/objmail: "
               "Connection refused\n")
    cases = [
        (("node", "list"), redis_line),
        (("where", "0" * 64), redis_line),
        (("repair",), redis_line),
        (("user", "list"), "objmail user list: " + pg_line),
        (("stats",), "objmail stats: " + pg_line),
    ]
    # A keyring, so that commands which open a blob client get as far as Redis.
    write_keyring(tmp_path / "keyring.toml", Keyring.generate())
    (tmp_path / "objmail.toml").write_text('[director]\nkeyring_file = "keyring.toml"\n')
    for args, line in cases:
        result, took = objmail(tmp_path, *args, env=env)
        assert (result.returncode, result.stderr) == (EX_UNAVAILABLE, line), args
        assert "secret" not in result.stderr
        # Well under the 30 s a daemon keeps retrying a cluster it once reached.
        assert took < 20.0, (args, took)


@pytest.mark.system
def test_deliver_defers_when_postgres_is_down(tmp_path: Path) -> None:
    """objmail deliver, an LDA, exits 75 (the MTA retries) rather than 69 (it bounces)."""
    env = {"OBJMAIL_PG_DSN": f"postgresql://objmail@127.0.0.1:{free_port()}/objmail"}
    result, took = objmail(tmp_path, "deliver", "--user", "ann", env=env,
                           stdin="Subject: x\r\n\r\nbody\r\n")
    assert result.returncode == EX_TEMPFAIL
    assert result.stderr.startswith("objmail deliver: PostgreSQL unreachable at")
    assert took < 20.0
