"""``objmail user add|passwd|del|list|quota`` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from metadata.store import MetadataStore
from ops import user_command
from ops.cli import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_USAGE,
    CommandContext,
    build_parser,
    main,
)
from ops.config import ClusterConfig, Config
from tests.metadata_support import fresh_database

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@pytest.fixture
def cfg(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("OBJMAIL_PG_DSN", raising=False)
    path = tmp_path / "objmail.toml"
    path.write_text(f'[cluster]\npg_dsn = "{dsn}"\n')
    return str(path)


def context(dsn: str, *argv: str) -> tuple[CommandContext, io.StringIO, io.StringIO]:
    args = build_parser().parse_args(list(argv))
    ctx = CommandContext(args, Config(cluster=ClusterConfig(pg_dsn=dsn)), None, {})
    ctx.out, ctx.err = io.StringIO(), io.StringIO()
    return ctx, ctx.out, ctx.err


def authenticate(dsn: str, name: str, password: str) -> bool:
    async def run() -> bool:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=1)
        try:
            return await store.users.authenticate(name, password) is not None
        finally:
            await store.close()

    return asyncio.run(run())


def count_rows(dsn: str, table: str, user_id: int) -> int:
    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1",
                                           user_id))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_add_from_stdin_in_a_real_process(cfg: str, dsn: str) -> None:
    """`objmail user add NAME --password-stdin --quota 2G` run as a process creates the user
    with the default mailboxes; the password read from stdin logs in."""
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "--config", cfg, "user", "add", "kate",
         "--password-stdin", "--quota", "2G"],
        input="s3cret pass\n", capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "OBJMAIL_PG_DSN"})
    assert result.returncode == EX_OK, result.stderr
    assert "created user kate (quota 2.0G)" in result.stdout
    assert authenticate(dsn, "kate", "s3cret pass")
    assert not authenticate(dsn, "kate", "s3cret pass\n")


def test_add_prompts_twice_on_a_terminal(dsn: str) -> None:
    """Without --password-stdin the password is asked twice; a mismatch refuses with
    EX_DATAERR, and without a terminal the command asks for --password-stdin."""
    prompts: list[str] = []
    answers = iter(["pw-one", "pw-one", "pw-a", "pw-b"])

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    ctx, _out, _err = context(dsn, "user", "add", "liam")
    assert user_command.run(ctx, stdin=io.StringIO(), prompt=prompt, interactive=True) == EX_OK
    assert prompts == ["Password: ", "Retype password: "]
    assert authenticate(dsn, "liam", "pw-one")

    ctx, _out, err = context(dsn, "user", "passwd", "liam")
    assert user_command.run(ctx, stdin=io.StringIO(), prompt=prompt,
                            interactive=True) == EX_DATAERR
    assert "do not match" in err.getvalue()
    assert authenticate(dsn, "liam", "pw-one")

    ctx, _out, err = context(dsn, "user", "add", "mona")
    assert user_command.run(ctx, stdin=io.StringIO(), prompt=prompt,
                            interactive=False) == EX_USAGE
    assert "--password-stdin" in err.getvalue()


def test_passwd_quota_list_and_errors(cfg: str, dsn: str,
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """passwd changes the password; quota changes the limits (storage, --messages, each
    left alone when not given); list shows both as text and
    JSON; a taken name, an unknown user, a bad size and an empty password get their exit
    codes."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\n"))
    assert main(["--config", cfg, "user", "add", "nina", "--password-stdin",
                 "--quota", "500M"]) == EX_OK
    monkeypatch.setattr(sys, "stdin", io.StringIO("second\n"))
    assert main(["--config", cfg, "user", "passwd", "NINA", "--password-stdin"]) == EX_OK
    assert authenticate(dsn, "nina", "second") and not authenticate(dsn, "nina", "first")
    capsys.readouterr()

    assert main(["--config", cfg, "user", "quota", "nina", "1G"]) == EX_OK
    assert "quota of nina is 1.0G" in capsys.readouterr().out
    assert main(["--config", cfg, "user", "quota", "nina", "--messages", "5000"]) == EX_OK
    assert "quota of nina is 1.0G, 5000 messages" in capsys.readouterr().out
    assert main(["--config", cfg, "user", "list", "--json"]) == EX_OK
    users = {u["name"]: u for u in json.loads(capsys.readouterr().out)}
    assert users["nina"]["quota_bytes"] == 1 << 30 and users["nina"]["used_bytes"] == 0
    assert users["nina"]["quota_messages"] == 5000
    assert main(["--config", cfg, "user", "quota", "nina"]) == EX_USAGE
    assert main(["--config", cfg, "user", "list"]) == EX_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "QUOTA", "USED", "MESSAGES", "CREATED"]
    assert any(line.split()[:2] == ["nina", "1.0G"] for line in table[1:])

    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main(["--config", cfg, "user", "add", "Nina", "--password-stdin"]) == EX_DATAERR
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\n"))
    assert main(["--config", cfg, "user", "passwd", "nobody", "--password-stdin"]) == EX_NOUSER
    assert main(["--config", cfg, "user", "quota", "nobody", "1G"]) == EX_NOUSER
    assert main(["--config", cfg, "user", "del", "nobody"]) == EX_NOUSER
    assert main(["--config", cfg, "user", "quota", "nina", "lots"]) == EX_USAGE
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["--config", cfg, "user", "add", "olga", "--password-stdin"]) == EX_DATAERR
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["--config", cfg, "user", "add", "bad name", "--password-stdin"]) == EX_DATAERR


def test_del_removes_everything(cfg: str, dsn: str,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`user del` removes the user, their mailboxes, subscriptions and usage, and says
    what it dropped."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["--config", cfg, "user", "add", "paul", "--password-stdin"]) == EX_OK
    capsys.readouterr()
    assert main(["--config", cfg, "user", "list", "--json"]) == EX_OK
    paul = next(u for u in json.loads(capsys.readouterr().out) if u["name"] == "paul")
    assert count_rows(dsn, "mailboxes", paul["id"]) == 6
    assert main(["--config", cfg, "user", "del", "paul"]) == EX_OK
    assert "deleted user paul: 6 mailbox(es)" in capsys.readouterr().out
    for table in ("mailboxes", "subscriptions", "user_usage", "messages", "message_blobs"):
        assert count_rows(dsn, table, paul["id"]) == 0
    assert not authenticate(dsn, "paul", "pw")


def test_unmigrated_database_is_a_config_error(postgres: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a database without the schema, user commands exit EX_CONFIG and say to run
    `objmail db migrate`."""
    monkeypatch.delenv("OBJMAIL_PG_DSN", raising=False)
    with fresh_database(postgres, migrate=False) as bare:
        path = tmp_path / "bare.toml"
        path.write_text(f'[cluster]\npg_dsn = "{bare}"\n')
        assert main(["--config", str(path), "user", "list"]) == EX_CONFIG
        assert "objmail db migrate" in capsys.readouterr().err
