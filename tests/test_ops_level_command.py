"""``objmail level`` run in-process against the session's Redis Cluster with a fresh
installation prefix and no object servers (the system test with real object servers is
in tests/test_director_leveler.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.cli import EX_OK, main
from tests.conftest import RunningRedis
from tests.test_ops_repair_command import config_file


def test_no_nodes_is_level(redis_cluster: RunningRedis, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """With no object servers there is nothing to level: the dry run plans no moves,
    a pass moves nothing, both exit 0."""
    path = str(config_file(tmp_path, redis_cluster))
    capsys.readouterr()
    assert main(["--config", path, "level", "--dry-run", "--json"]) == EX_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["balanced"] and plan["moves"] == [] and plan["nodes"] == []
    assert main(["--config", path, "level", "--once", "--json"]) == EX_OK
    stats = json.loads(capsys.readouterr().out)
    assert stats["balanced"] and stats["moved"] == 0 and stats["passes"] == 1
    assert main(["--config", path, "level"]) == EX_OK
    assert "nothing to move" in capsys.readouterr().out
