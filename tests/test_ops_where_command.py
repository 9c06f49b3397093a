"""``objmail where BLOB_ID`` in-process, and its raw redis-cli line run in a real shell."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid

import pytest

from director.keys import IndexLayout, Keyspace
from ops.cli import EX_DATAERR, EX_OK
from ops.config import DirectorConfig
from ops.where_command import EX_NOT_INDEXED, redis_cli_line
from tests.conftest import RunningRedis
from tests.test_director_index import with_index
from tests.test_ops_node_command import Cli, cli, listed, unique, unique_address

__all__ = ["cli"]  # the fixture, shared with the node command tests


def test_where_lists_the_nodes_holding_a_blob(cli: Cli, redis_cluster: RunningRedis) -> None:
    """An indexed blob is shown with each holder's id, address, zone and state."""
    a = unique("w")
    addr = unique_address()
    cli("node", "add", addr, "--zone", "za", "--tier", "ssd", "--id", a)
    num = listed(cli)[a]["number"]
    assert isinstance(num, int)
    blob = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    with_index(redis_cluster, DirectorConfig().index_buckets,
               lambda index: index.add_locations(blob, [num, 99_999]), Keyspace())
    code, out, _err = cli("where", blob)
    assert code == EX_OK
    assert f"{a}  {addr}  site default  zone za" in out
    assert "(not registered)" in out  # 99999 is no node
    code, out, _err = cli("where", blob.upper(), "--json")
    assert code == EX_OK
    doc = json.loads(out)
    assert doc["indexed"] and [n["id"] for n in doc["nodes"]] == [a, None]
    assert doc["bucket"] == f"objmail:ix:{blob[:4]}" and doc["field_hex"] == blob[4:]


def test_unknown_and_invalid_blobs(cli: Cli) -> None:
    """A blob the index does not know exits 1; a non-id exits 65 naming the problem."""
    code, out, _err = cli("where", hashlib.sha256(uuid.uuid4().bytes).hexdigest())
    assert code == EX_NOT_INDEXED and "not in the index" in out
    code, _out, err = cli("where", "xyz")
    assert code == EX_DATAERR and "not a blob id" in err


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
def test_printed_redis_cli_line_answers_the_same(redis_cluster: RunningRedis) -> None:
    """The raw line, pasted into a shell, gets the node list from Redis directly, even
    for ids whose binary field holds newlines, quotes and backslashes."""
    keys = Keyspace(f"t-{uuid.uuid4().hex[:8]}:")
    tricky = "0000" + "0a0d092022275c7c00" + "ab" * 21
    assert len(tricky) == 64
    with_index(redis_cluster, 65536, lambda index: index.add_locations(tricky, [3, 11]), keys)
    line = redis_cli_line(tricky, IndexLayout(65536), keys, redis_cluster.cluster.config.cluster)
    assert redis_cluster.auth.password is not None
    assert "REDISCLI_AUTH=" in line and redis_cluster.auth.password not in line
    result = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=20,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3,11"
