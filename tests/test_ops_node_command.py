"""``objmail node ...`` run in-process against the session's Redis Cluster.

These use the default key names (as an operator would), so every test works with its
own node ids and addresses.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from director.keys import Keyspace
from ops.cli import EX_CONFIG, EX_DATAERR, EX_OK, EX_TEMPFAIL, main
from ops.config import ENV_REDIS_NODES, DirectorConfig
from tests.conftest import RunningRedis, credential_keys, free_port_block
from tests.test_director_index import with_index


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        self.capsys = capsys
        self.config = config

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--config", str(self.config), *argv])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(redis_cluster: RunningRedis, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv(ENV_REDIS_NODES, ",".join(redis_cluster.nodes))
    config = tmp_path / "objmail.toml"
    config.write_text("# defaults; Redis from OBJMAIL_REDIS_NODES\n[cluster]\n"
                      + credential_keys(redis_cluster.cluster.config.cluster))
    return Cli(capsys, config)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def unique_address() -> str:
    """A loopback address nothing listens on: these nodes are registered, never reached."""
    n = uuid.uuid4().int
    return f"127.{1 + n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250}:9"


def listed(cli: Cli, *extra: str) -> dict[str, dict[str, object]]:
    code, out, _err = cli("node", "list", "--json", *extra)
    assert code == EX_OK
    return {row["id"]: row for row in json.loads(out)}


def test_add_then_list(cli: Cli) -> None:
    """node add registers a node with a number (in site 'default' unless --site says
    otherwise); node list shows it, as a table and as JSON; without a report it is
    down."""
    node_id, address = unique("n"), unique_address()
    code, out, err = cli("node", "add", address, "--zone", "z1", "--tier", "hdd",
                         "--weight", "3", "--id", node_id)
    assert code == EX_OK, err
    assert f"added node {node_id} (number " in out and ": site default, zone z1" in out
    assert "no live load report" in err
    other_id, other_address = unique("n"), unique_address()
    code, out, err = cli("node", "add", other_address, "--site", "east", "--zone", "z2",
                         "--tier", "hdd", "--id", other_id)
    assert code == EX_OK, err
    rows = listed(cli)
    row = rows[node_id]
    assert (row["address"], row["site"], row["zone"], row["tier"], row["weight"],
            row["state"]) == (address, "default", "z1", "hdd", 3.0, "down")
    assert isinstance(row["number"], int) and row["report_age"] is None
    assert (rows[other_id]["site"], rows[other_id]["zone"]) == ("east", "z2")
    code, out, _err = cli("node", "list")
    header, *lines = out.splitlines()
    assert header.split() == ["ID", "NUM", "ADDRESS", "SITE", "ZONE", "TIER", "STATE",
                              "USED/CAPACITY", "ITEMS", "OPS/S", "CPU", "IO/S", "REPORT"]
    mine = [line for line in lines if line.startswith(node_id)]
    assert mine and mine[0].split()[2:7] == [address, "default", "z1", "hdd", "down"]
    other = [line for line in lines if line.startswith(other_id)]
    assert other and other[0].split()[3:5] == ["east", "z2"]


def test_add_without_id_needs_a_reporting_server(cli: Cli) -> None:
    """Without --id, node add takes the id from the object server's report, and says so
    when nothing reports from that address."""
    code, _out, err = cli("node", "add", unique_address(), "--zone", "a", "--tier", "ssd")
    assert code == EX_DATAERR
    assert "no object server reports from" in err and "--id" in err


def test_add_refuses_duplicates(cli: Cli) -> None:
    """Adding an id twice is refused with the reason."""
    node_id, address = unique("n"), unique_address()
    assert cli("node", "add", address, "--zone", "a", "--tier", "ssd", "--id", node_id)[0] == 0
    code, _out, err = cli("node", "add", unique_address(), "--zone", "a", "--tier", "ssd",
                          "--id", node_id)
    assert code == EX_DATAERR and "already registered" in err


@pytest.mark.slow
def test_real_objstored_is_new_until_added(cli: Cli, redis_cluster: RunningRedis,
                                           tmp_path: Path) -> None:
    """A running objstored that reports to Redis is listed as new; node add ADDR finds
    its id from the report and it becomes active with its figures."""
    cluster = redis_cluster.cluster
    port = free_port_block(1)
    node_id = unique("objstored-cli")
    spec = cluster.objstored_spec(node_id, "127.0.0.1", port, tmp_path / "objstore", zone="b")
    cluster.launcher.start(spec)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while node_id not in (rows := listed(cli)):
            assert time.monotonic() < deadline, "objstored never reported"
            time.sleep(0.3)
        assert (rows[node_id]["state"], rows[node_id]["number"]) == ("new", None)
        code, out, err = cli("node", "add", address, "--zone", "b", "--tier", "ssd")
        assert code == EX_OK, err
        assert f"added node {node_id}" in out and "state active" in out
        row = listed(cli)[node_id]
        assert row["state"] == "active"
        assert isinstance(row["capacity_bytes"], int) and row["capacity_bytes"] > 0
        assert isinstance(row["report_age"], float) and row["report_age"] < 10
    finally:
        cluster.launcher.stop(spec)


def test_drain_and_activate(cli: Cli) -> None:
    """drain marks a node draining (shown as such even while it is down); activate
    undoes it; an unknown id is an error naming it."""
    node_id = unique("n")
    cli("node", "add", unique_address(), "--zone", "a", "--tier", "ssd", "--id", node_id)
    code, out, _err = cli("node", "drain", node_id)
    assert code == EX_OK and "is draining" in out
    row = listed(cli)[node_id]
    assert (row["state"], row["admin_state"]) == ("down", "draining")
    _code, table, _err = cli("node", "list")
    assert "down (draining)" in next(line for line in table.splitlines()
                                     if line.startswith(node_id))
    code, out, _err = cli("node", "activate", node_id)
    assert code == EX_OK and listed(cli)[node_id]["admin_state"] == "active"
    code, _out, err = cli("node", "drain", "no-such-node")
    assert code == EX_DATAERR and "no-such-node" in err


def test_dead_marks_a_node_gone_until_activated(cli: Cli) -> None:
    """node dead marks a node dead (its state whatever its report says) and points at
    repair and remove; activate brings it back; an unknown id is an error naming it."""
    node_id = unique("n")
    cli("node", "add", unique_address(), "--zone", "a", "--tier", "ssd", "--id", node_id)
    code, out, _err = cli("node", "dead", node_id)
    assert code == EX_OK and "is dead" in out and f"node remove {node_id}" in out
    row = listed(cli)[node_id]
    assert (row["state"], row["admin_state"]) == ("dead", "dead")
    assert cli("node", "activate", node_id)[0] == EX_OK
    assert listed(cli)[node_id]["state"] == "down"
    code, _out, err = cli("node", "dead", "no-such-node")
    assert code == EX_DATAERR and "no-such-node" in err


def test_remove_refused_while_sole_copies_exist(cli: Cli, redis_cluster: RunningRedis) -> None:
    """node remove refuses while the node holds a blob's only copy, then succeeds once
    another copy is recorded; removed nodes only show with --all."""
    a, b = unique("a"), unique("b")
    cli("node", "add", unique_address(), "--zone", "a", "--tier", "ssd", "--id", a)
    cli("node", "add", unique_address(), "--zone", "b", "--tier", "ssd", "--id", b)
    rows = listed(cli)
    num_a, num_b = rows[a]["number"], rows[b]["number"]
    assert isinstance(num_a, int) and isinstance(num_b, int)
    blob = uuid.uuid4().hex * 2
    buckets = DirectorConfig().index_buckets
    with_index(redis_cluster, buckets, lambda index: index.add_locations(blob, [num_a]),
               Keyspace())
    code, _out, err = cli("node", "remove", a)
    assert code == EX_TEMPFAIL
    assert "only copy of 1 blob" in err and blob in err
    assert listed(cli)[a]["admin_state"] == "active"
    with_index(redis_cluster, buckets, lambda index: index.add_locations(blob, [num_b]),
               Keyspace())
    code, out, err = cli("node", "remove", a)
    assert code == EX_OK, err
    assert "took it out of 1 index entries" in out
    assert with_index(redis_cluster, buckets, lambda index: index.locations(blob),
                      Keyspace()) == (num_b,)
    assert a not in listed(cli)
    assert listed(cli, "--all")[a]["state"] == "removed"


def test_index_bucket_count_mismatch_is_a_config_error(cli: Cli, tmp_path: Path) -> None:
    """A config whose index_buckets differs from the index's is refused with exit 78."""
    assert cli("node", "list")[0] == EX_OK  # the index exists with the default count
    other = tmp_path / "other.toml"
    other.write_text(cli.config.read_text() + "[director]\nindex_buckets = 128\n")
    code, _out, err = Cli(cli.capsys, other)("node", "list")
    assert code == EX_CONFIG
    assert "index_buckets" in err
