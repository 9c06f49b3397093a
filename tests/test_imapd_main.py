"""The imapd process entry point: the listener list, bad configuration, failed start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from imapd.config import ImapdConfig, ImapdProcessConfig
from imapd.lmtp import LMTPFactory
from imapd.main import EX_CONFIG, Services, listeners
from imapd.pop3server import Pop3Factory
from imapd.server import IMAPFactory
from ops.launcher import free_port
from runtime.secrets import write_secret
from tests.conftest import SessionCluster

REPO = Path(__file__).resolve().parents[1]


def services(imapd: ImapdConfig, tls: object = None) -> Services:
    from imapd.backend import Backend

    backend = Backend(cast(Any, None), cast(Any, None), cast(Any, None), cast(Any, None),
                      imapd, cast(Any, None))
    return Services(ImapdProcessConfig(imapd=imapd), None, None, None, None, backend, tls)


def test_listeners_follow_the_config() -> None:
    """IMAP, POP3 and LMTP always (unless their address is empty); IMAPS only with a TLS
    context, and then with the context attached for listenSSL."""
    found = listeners(services(ImapdConfig()))
    assert [(x.name, x.address) for x in found] == [("imap", "127.0.0.1:1143"),
                                                    ("pop3", "127.0.0.1:1110"),
                                                    ("lmtp", "127.0.0.1:2424")]
    assert isinstance(found[0].factory, IMAPFactory)
    assert isinstance(found[1].factory, Pop3Factory)
    assert isinstance(found[2].factory, LMTPFactory)
    tls = object()
    found = listeners(services(ImapdConfig(pop3_listen="", lmtp_listen=""), tls))
    assert [x.name for x in found] == ["imap", "imaps"]
    assert found[1].tls is tls and found[1].factory.secure and found[0].factory.tls is tls


def run_imapd(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imapd.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every line of ``stderr``, each of which must be a JSON object with the stable
    field set."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    for fields in lines:
        assert list(fields)[:5] == ["ts", "level", "logger", "pid", "msg"], fields
    return lines


@pytest.mark.system
def test_bad_config_exits_with_ex_config(tmp_path: Path) -> None:
    """A config with an unknown key is refused before anything starts (exit 78), the
    message naming the key, as a JSON line with --log-format json."""
    path = tmp_path / "bad.toml"
    path.write_text("[imapd]\nno_such_key = 1\n")
    result = run_imapd(["--config", str(path), "--log-format", "json"])
    assert result.returncode == EX_CONFIG == 78
    (line,) = json_lines(result.stderr)
    assert line["level"] == "error" and "imapd.no_such_key" in str(line["msg"])
    path.write_text("")
    bad = run_imapd(["--config", str(path), "--metrics-listen", "nohost"])
    assert bad.returncode == 78 and "imapd.metrics_listen" in bad.stderr


@pytest.mark.system
def test_unreachable_postgresql_fails_the_start(tmp_path: Path) -> None:
    """With PostgreSQL unreachable the process logs why (JSON lines with --log-format
    json) and exits 69 (EX_UNAVAILABLE) instead of serving."""
    dead, port = free_port(), free_port()
    path = tmp_path / "imapd.toml"
    path.write_text(f'[cluster]\npg_dsn = "postgresql://postgres@127.0.0.1:{dead}/x"\n'
                    f'[imapd]\nimap_listen = "127.0.0.1:{port}"\npop3_listen = ""\n'
                    'metrics_listen = ""\n')
    result = run_imapd(["--config", str(path), "--log-format", "json"])
    assert result.returncode == 69, result.stderr[-2000:]
    errors = [x for x in json_lines(result.stderr) if x["level"] == "error"]
    # One process, or (workers = 0: one per core) a worker saying so and the supervisor.
    assert any(re.match(r"imapd( worker \d+)? cannot start", str(x["msg"])) for x in errors)


@pytest.mark.system
def test_a_wrong_postgresql_password_fails_the_start(tmp_path: Path, postgres: str,
                                                     test_cluster: SessionCluster) -> None:
    """PostgreSQL refusing imapd's password (cluster.pg_password_file) stops the start
    with exit 69 (EX_UNAVAILABLE) and a message saying the credentials were refused,
    without the password."""
    secret = tmp_path / "wrong.password"
    write_secret(secret, "not-the-password")
    path = tmp_path / "imapd.toml"
    path.write_text(f'[cluster]\npg_dsn = "{test_cluster.pg_dsn}"\n'
                    f'pg_password_file = "{secret}"\n'
                    f'[imapd]\nimap_listen = "127.0.0.1:{free_port()}"\npop3_listen = ""\n'
                    f'lmtp_listen = ""\nmetrics_listen = ""\n')
    result = run_imapd(["--config", str(path)])
    assert result.returncode == 69, result.stderr[-2000:]
    assert "PostgreSQL refused the credentials" in result.stderr
    assert "not-the-password" not in result.stderr
