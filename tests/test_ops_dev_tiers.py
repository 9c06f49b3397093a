"""``objmail dev up --tiers FAST:N,SLOW:M``: a dev cluster with a storage hierarchy to
try tiering on.  The option's parsing and the config it writes, then a real cluster of
two SSD and two HDD object servers and a directord brought up by the devcluster code:
the nodes registered in their tiers, new blobs placed by the hot layout (one SSD copy,
one HDD copy) and read back through directord, and ``objmail tier --dry-run`` planning
nothing for them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from director.client import BlobClient
from director.config import TierConfig
from ops.cli import EX_OK, EX_USAGE, main
from ops.config import Config, load_config, parse_hostport
from ops.devcluster import DevCluster, DevOptions, dev_tier_configs, parse_dev_tiers
from tests.director_installation import Installation, installation_fixture, with_client
from tests.memcache_auth import LoginClient

TIERS = (("ssd", 2), ("hdd", 2))


def test_tiers_option_is_two_named_counts() -> None:
    assert parse_dev_tiers("ssd:2,hdd:1") == (("ssd", 2), ("hdd", 1))
    assert parse_dev_tiers(" nvme:1 , disk:3") == (("nvme", 1), ("disk", 3))
    for bad in ("ssd:2", "ssd:2,hdd:1,tape:1", "ssd:2,ssd:1", "ssd,hdd", "ssd:0,hdd:1",
                "ssd:x,hdd:1", ":1,hdd:1"):
        with pytest.raises(ValueError):
            parse_dev_tiers(bad)
    # One HDD node: a cold blob keeps the one copy it can have there.
    assert dev_tier_configs((("ssd", 2), ("hdd", 1))) == (
        TierConfig("ssd", 0, 1, 0), TierConfig("hdd", 1, 1, 1))


def test_cli_refuses_a_bad_tiers_option(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything starts (nothing is written under --dir)."""
    assert main(["dev", "up", "--dir", str(tmp_path / "var"), "--tiers", "ssd:2"]) \
        == EX_USAGE
    assert "two tiers" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()


def test_config_and_nodes_of_a_tiered_dev_cluster(tmp_path: Path) -> None:
    """The object servers are dealt into the tiers in order, each started with its
    ``--tier``; the config every daemon reads has the matching ``[[director.tiers]]``."""
    cluster = DevCluster(Config(), tmp_path, DevOptions(objstore_count=4, tiers=TIERS))
    assert [n.tier for n in cluster.dev_objstores()] == ["ssd", "ssd", "hdd", "hdd"]
    spec = cluster.spec("objstored-3")
    assert spec.argv[spec.argv.index("--tier") + 1] == "hdd"
    written = load_config(cluster.write_config(), {})
    assert written.director.tiers == (TierConfig("ssd", 0, 1, 0),
                                      TierConfig("hdd", 1, 1, 2))
    # Without --tiers: every node in objstore.tier, no hierarchy.
    plain = DevCluster(Config(), tmp_path / "plain", DevOptions(objstore_count=2))
    assert [n.tier for n in plain.dev_objstores()] == ["ssd", "ssd"]
    assert plain.config.director.tiers == ()


inst = installation_fixture("devtiers", objstores=4, stages=("objstore", "directord"),
                            dev_tiers=TIERS, cache_bytes=0)


def test_tiered_dev_cluster_places_by_the_hot_layout(inst: Installation,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    data = [os.urandom(10_000 + i) for i in range(6)]

    async def registered(client: BlobClient) -> dict[str, str]:
        return {n.id: n.tier for n in (await client.snapshot(force=True)).nodes}

    assert with_client(inst.config, registered) == {
        "objstored-1": "ssd", "objstored-2": "ssd", "objstored-3": "hdd",
        "objstored-4": "hdd"}
    assert inst.config.director.tiers == dev_tier_configs(TIERS)

    # Stored with the written config: one SSD copy, one HDD; directord reads them back.
    ids = with_client(inst.config, lambda c: c.put_many(data))
    host, port = parse_hostport(inst.config.director.listen)
    mc = LoginClient((host, port), inst.cluster.directord_access(), timeout=10)
    try:
        assert [mc.get(bid) is not None for bid in ids] == [True] * len(ids)
    finally:
        mc.close()

    async def tiers_of(client: BlobClient) -> list[list[str]]:
        snap = await client.snapshot(force=True)
        found = await client.index.lookup(ids)
        return [sorted(snap.by_number(n).tier for n in found[b])  # type: ignore[union-attr]
                for b in ids]

    assert with_client(inst.config, tiers_of) == [["hdd", "ssd"]] * len(ids)
    capsys.readouterr()
    assert main(["--config", str(inst.cluster.config_path), "tier", "--once", "--dry-run",
                 "--json"]) == EX_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["moves"] == [] and plan["finished"]
