"""The items migration with real processes: a private installation (three objstored and
directord) whose directord items are recorded the way releases before the items' key
space recorded them, in the blobs' buckets (``ix:``), and whose ``index_meta`` lacks
``items_keyspace``, as such an index does.

What is checked: such items read as missing through directord and gc refuses to run; a
migration interrupted after its first page keeps its place (``--status``) and a rerun
finishes it; then every item reads back through directord with its flags (a key stored
again since the upgrade with its new value), the blobs' space holds none of them, and
``objmail gc`` runs and leaves them readable; a second run moves nothing; a fresh index
needs no migration.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from director.client import BlobClient
from director.collector import Collector
from director.errors import ItemsNotMigrated
from director.index import ITEMS_KEYSPACE
from director.itemmigration import ItemMigration, MigrateStats
from director.keys import item_index_id
from director.redisconn import Command
from ops.cli import EX_CONFIG, EX_OK, main
from ops.config import Config, parse_hostport, to_toml
from tests.director_installation import (
    Installation,
    drop_prefix,
    installation_fixture,
    with_client,
)
from tests.memcache_auth import LoginClient

pytestmark = pytest.mark.timeout(180)

inst = installation_fixture("itemmigration", objstores=3, stages=("objstore", "directord"),
                            cache_bytes=0, gc_min_grace=0.0)


@pytest.fixture(scope="module")
def config_path(inst: Installation, postgres: str, tmp_path_factory: pytest.TempPathFactory,
                ) -> Path:
    """The installation's config with the session's PostgreSQL (gc asks it which blobs
    messages reference)."""
    config: Config = dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, pg_dsn=postgres))
    path = tmp_path_factory.mktemp("itemmigration-config") / "objmail.toml"
    path.write_text(to_toml(config))
    return path


def directord(inst: Installation) -> LoginClient:
    """pymemcache talking to the installation's directord, logged in."""
    host, port = parse_hostport(inst.config.director.listen)
    return LoginClient((host, port), inst.cluster.directord_access(), timeout=10,
                       connect_timeout=5, default_noreply=False)


async def record_the_old_way(client: BlobClient, keys: list[bytes]) -> None:
    """Move the items' entries to the blobs' buckets, as directord recorded them before
    the items' key space (``index.add_many`` of ``item_index_id(key)``), and drop the
    index's ``items_keyspace`` field, which an index of that time never had."""
    ids = [item_index_id(k) for k in keys]
    found = await client.items.lookup(ids)
    assert all(found.values()), found
    await client.index.add_many(found)
    await client.items.delete_many(ids)
    meta = client.index.keys.index_meta
    await client.index.runner.run("test", [Command(meta, ("HDEL", meta, ITEMS_KEYSPACE))],
                                  durable=True)


class NoReferences:
    """A metadata store in which no message references anything."""

    async def referenced(self, blob_ids: Iterable[str]) -> set[str]:
        return set()


def objmail(config_path: Path, capsys: pytest.CaptureFixture[str], *args: str,
            ) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", str(config_path), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_old_items_are_migrated_online_and_survive_gc(
        inst: Installation, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Items recorded in the blobs' space read as missing and keep gc out; a migration
    stopped after its first page resumes; afterwards every item reads back through
    directord (a key set again after the upgrade with its new value), none is left in
    the blobs' space, gc runs, and the items still read back."""
    mc = directord(inst)
    values = {f"legacy-{n}-{os.urandom(3).hex()}".encode(): os.urandom(100 + 300 * n)
              for n in range(12)}
    for n, (key, value) in enumerate(values.items()):
        assert mc.set(key, value, flags=n)
    keys = list(values)
    with_client(inst.config, lambda c: record_the_old_way(c, keys))

    # Before: directord cannot find them, gc will not run.
    assert mc.get(keys[0]) is None
    code, out = objmail(config_path, capsys, "gc", "--grace", "0")
    assert code == EX_CONFIG and "objmail index migrate-items" in out
    code, out = objmail(config_path, capsys, "index", "migrate-items", "--status")
    assert code == EX_OK and "not migrated yet" in out

    # A client stores one key again after the upgrade: its new entry must win.
    renewed = keys[-1]
    assert mc.set(renewed, b"stored again", flags=77)

    async def cut(client: BlobClient) -> MigrateStats:
        stats = await ItemMigration(client, page=4).run_once(max_items=1)
        with pytest.raises(ItemsNotMigrated):  # still not: the run is not over
            await Collector(client, NoReferences(), grace=0.0).run_once()
        return stats

    first = with_client(inst.config, cut)
    assert first.interrupted and not first.finished and first.items == 4
    code, out = objmail(config_path, capsys, "index", "migrate-items", "--status", "--json")
    status = json.loads(out)
    assert code == EX_OK and status["running"] and status["items"] == 4
    assert status["items_keyspace"] is None
    code, out = objmail(config_path, capsys, "status", "--json")
    jobs = {j["job"]: j for j in json.loads(out)["jobs"]}
    assert jobs["items-migrate"]["progress"] == f"at {first.node}: 4 item keys, " \
        f"{first.moved} moved"

    code, out = objmail(config_path, capsys, "index", "migrate-items", "--json")
    assert code == EX_OK, out
    result = json.loads(out)
    assert result["finished"] and result["complete"] and not result["skipped"]
    # Two replicas each: the first node that lists an item moves its entry, the second
    # finds it moved; the key stored again was superseded, never merged.
    assert result["moved"] == len(keys) - 1 and result["superseded"] == 1
    assert result["moved"] + result["superseded"] + result["already"] == 2 * len(keys)
    assert result["unindexed"] == 0

    async def spaces(client: BlobClient) -> tuple[dict[str, tuple[int, ...]], ...]:
        ids = [item_index_id(k) for k in keys]
        return await client.index.lookup(ids), await client.items.lookup(ids)

    old, new = with_client(inst.config, spaces)
    assert not any(old.values()) and all(len(n) == 2 for n in new.values())
    assert mc.get(renewed) == b"stored again"
    for n, key in enumerate(keys[:-1]):
        assert mc.get(key) == values[key], key
        assert item_flags(inst, key) == n

    code, out = objmail(config_path, capsys, "gc", "--grace", "0", "--json")
    assert code == EX_OK, out
    assert json.loads(out)["finished"]
    for key in keys:
        expected = b"stored again" if key == renewed else values[key]
        assert mc.get(key) == expected, key

    # Idempotent: a second run finds everything in place.
    code, out = objmail(config_path, capsys, "index", "migrate-items")
    assert code == EX_OK and "items-migrate: done: 3 of 3 node(s)" in out, out
    assert "; 0 item entr(ies) moved to the items' key space, 0 superseded" in out
    assert "gc may run" in out
    code, out = objmail(config_path, capsys, "index", "migrate-items", "--status")
    assert "directord items: migrated" in out and "the last run finished" in out
    mc.close()


def item_flags(inst: Installation, key: bytes) -> int:
    async def go(client: BlobClient) -> int:
        got = await client.get_item(key)
        assert got is not None
        return got.flags

    return with_client(inst.config, go)


def test_a_fresh_index_needs_no_migration(inst: Installation) -> None:
    """An index created by this release records items in their own key space from the
    start: ``index_meta`` says so, and gc does not wait for a migration."""
    async def go(client: BlobClient) -> str | None:
        return await client.index.items_keyspace()

    # The module's first test migrated this index; a new prefix is a new index.
    fresh = dataclasses.replace(inst.config, cluster=dataclasses.replace(
        inst.config.cluster, redis_prefix=inst.config.cluster.redis_prefix + "fresh:"))
    try:
        assert with_client(fresh, go) == "created"
    finally:
        drop_prefix(fresh)
