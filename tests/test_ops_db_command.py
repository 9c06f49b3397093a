"""``objmail db migrate|status`` against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metadata.migrate import load_migrations
from ops.cli import EX_CONFIG, EX_OK, EX_UNAVAILABLE, main
from ops.launcher import free_port
from tests.metadata_support import fresh_database, with_database


def config_file(tmp_path: Path, dsn: str) -> str:
    path = tmp_path / "objmail.toml"
    path.write_text(f'[cluster]\npg_dsn = "{dsn}"\n')
    return str(path)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBJMAIL_PG_DSN", raising=False)


def test_migrate_then_status(postgres: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """status reports pending (EX_CONFIG), migrate applies each migration once, a second migrate says
    up to date, and status then reports applied with exit 0, also as JSON."""
    with fresh_database(postgres, migrate=False) as dsn:
        cfg = config_file(tmp_path, dsn)
        assert main(["--config", cfg, "db", "status"]) == EX_CONFIG
        out = capsys.readouterr()
        assert "pending" in out.out and "objmail db migrate" in out.err

        shipped = load_migrations()
        assert main(["--config", cfg, "db", "migrate"]) == EX_OK
        assert "applied 0001_initial" in capsys.readouterr().out
        assert main(["--config", cfg, "db", "migrate"]) == EX_OK
        assert f"up to date (version {len(shipped)})" in capsys.readouterr().out
        assert main(["--config", cfg, "db", "migrate", "--json"]) == EX_OK
        assert json.loads(capsys.readouterr().out) == {"applied": [], "version": len(shipped)}

        assert main(["--config", cfg, "db", "status", "--json"]) == EX_OK
        states = json.loads(capsys.readouterr().out)
        assert [(s["version"], s["name"], s["state"]) for s in states] == [
            (m.version, m.name, "applied") for m in shipped]
        assert states[0]["applied_at"]


def test_unreachable_and_missing_database(postgres: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A server nobody answers on gives EX_UNAVAILABLE and one line naming where; a
    database that does not exist gives EX_CONFIG with a hint; both name the problem."""
    port = free_port()
    cfg = config_file(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/objmail")
    assert main(["--config", cfg, "db", "migrate"]) == EX_UNAVAILABLE
    assert capsys.readouterr().err == (f"objmail db migrate: PostgreSQL unreachable at "
                                       f"127.0.0.1:{port}/objmail: Connection refused\n")

    cfg = config_file(tmp_path, with_database(postgres, "objmail_no_such_db"))
    assert main(["--config", cfg, "db", "status"]) == EX_CONFIG
    assert "does not exist" in capsys.readouterr().err


def test_compact_runs_over_every_message(postgres: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """compact rewrites old rows batch by batch and reports how many of how many; a second
    run finds nothing left to do; a batch of 0 is refused."""
    import asyncio

    import asyncpg

    with fresh_database(postgres) as dsn:
        async def seed() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                await conn.execute(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, section_map, header_fields, search_header) "
                    "SELECT $1, $2, 10, '', '', '', '', '[[\"x\", \"y\"]]', 'x: y' "
                    "FROM generate_series(1, 5)", user, bytes(32))
            finally:
                await conn.close()

        asyncio.run(seed())
        cfg = config_file(tmp_path, dsn)
        assert main(["--config", cfg, "db", "compact", "--batch", "2"]) == EX_OK
        assert capsys.readouterr().out == "5 of 5 messages compacted\n"
        assert main(["--config", cfg, "db", "compact", "--json"]) == EX_OK
        assert json.loads(capsys.readouterr().out) == {"messages": 5, "compacted": 0}
        assert main(["--config", cfg, "db", "compact", "--batch", "0"]) == EX_CONFIG
