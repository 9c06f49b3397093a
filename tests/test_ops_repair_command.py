"""``objmail repair`` run in-process against the session's Redis Cluster, on a fresh
installation prefix with no object servers (the system tests with real object servers
are in tests/test_director_repairer.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from director.keyring import Keyring, write_keyring
from ops.cli import EX_CONFIG, EX_OK, main
from tests.conftest import RunningRedis, credential_keys


def config_file(tmp_path: Path, redis_cluster: RunningRedis, buckets: int = 64) -> Path:
    path = tmp_path / "objmail.toml"
    keyring = tmp_path / "keyring.toml"
    write_keyring(keyring, Keyring.generate())
    nodes = ", ".join(f'"{n}"' for n in redis_cluster.nodes)
    path.write_text(f'[cluster]\nredis_nodes = [{nodes}]\n'
                    f'redis_prefix = "t{uuid.uuid4().hex[:8]}:"\n'
                    + credential_keys(redis_cluster.cluster.config.cluster) +
                    f'[director]\nindex_buckets = {buckets}\nkeyring_file = "{keyring}"\n')
    return path


def test_nothing_to_repair(redis_cluster: RunningRedis, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """On an empty installation a pass sweeps the whole index, finds nothing, exits 0;
    the text and JSON forms say so."""
    path = config_file(tmp_path, redis_cluster)
    capsys.readouterr()
    assert main(["--config", str(path), "repair", "--once", "--json"]) == EX_OK
    stats = json.loads(capsys.readouterr().out)
    assert stats["swept_buckets"] == 64 and stats["sweep_wrapped"]
    assert stats["claimed"] == stats["repaired"] == stats["backlog"] == 0
    assert main(["--config", str(path), "repair"]) == EX_OK
    out = capsys.readouterr().out
    assert "0 queued blob(s) checked in 1 pass(es)" in out
    assert "64 bucket(s) checked" in out


def test_bucket_count_mismatch_is_a_config_error(redis_cluster: RunningRedis, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A config whose index_buckets differs from the index's is refused with exit 78."""
    path = config_file(tmp_path, redis_cluster, 64)
    assert main(["--config", str(path), "repair", "--once"]) == EX_OK
    text = path.read_text().replace("index_buckets = 64", "index_buckets = 128")
    path.write_text(text)
    capsys.readouterr()
    assert main(["--config", str(path), "repair", "--once"]) == EX_CONFIG
    assert "index_buckets" in capsys.readouterr().err
