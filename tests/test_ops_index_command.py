"""``objmail index rebuild`` after the worst case: every Redis master flushed while an IMAP
client fetches, with real processes (a Redis Cluster of this test alone, three objstored,
imapd; the session's PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from director.redisstate import RedisState
from ops.config import Config, parse_hostport
from ops.devcluster import DevCluster, DevOptions
from tests.conftest import CORPUS, make_test_config, redis_auth
from tests.imapd_process import Mail
from tests.imapd_support import corpus

pytestmark = pytest.mark.system

#: Messages delivered: the corpus's first ones under this size with CRLF line ends only
#: (IMAP hands out CRLF lines, so these read back exactly as delivered).
MESSAGES = 40
MAX_SIZE = 200_000


def corpus_messages() -> list[bytes]:
    rows = [line.split("\t") for line in
            (CORPUS / "FEATURES.tsv").read_text().splitlines()[1:]]
    names = [f"{source}/{path}" for source, path, size, features in rows
             if int(size) < MAX_SIZE and "crlf-only" in features.split(",")]
    return [corpus(name) for name in names[:MESSAGES]]


@pytest.fixture
def installation(postgres: str, tmp_path: Path) -> Iterator[DevCluster]:
    """Redis Cluster + 3 objstored + imapd of this test, on the session's PostgreSQL,
    without a frontend cache (so fetches need the index).  A node registered before the
    object servers takes number 1, so theirs are 2, 3, 4: re-registering them in order
    would not give those back by chance."""
    base = make_test_config()
    config = dataclasses.replace(
        base, cluster=dataclasses.replace(base.cluster, pg_dsn=postgres),
        director=dataclasses.replace(base.director, cache_bytes=0, timeout=1.0))
    options = DevOptions(objstore_count=3, external_pg=True, fast=True,
                         redis_node_timeout_ms=2000, install_missing=False)
    run_dir = tmp_path / "var"
    redis_only = DevCluster(config, run_dir, dataclasses.replace(
        options, only=frozenset({"redis"})))
    cluster = DevCluster(config, run_dir, dataclasses.replace(
        options, only=frozenset({"redis", "objstore", "imapd"})))
    try:
        redis_only.up()
        asyncio.run(_register_ghost(redis_only.config))
        cluster.up()
        yield cluster
    finally:
        cluster.down()


async def _register_ghost(config: Config) -> None:
    state = await RedisState.open(config.cluster, config.director,
                                  auth=redis_auth(config.cluster))
    try:
        await state.registry.add("ghost", "127.0.0.1:9", zone="z", tier="ssd")
    finally:
        await state.aclose()


async def _numbers(config: Config) -> dict[str, int]:
    state = await RedisState.open(config.cluster, config.director,
                                  auth=redis_auth(config.cluster))
    try:
        return {n.id: n.number for n in (await state.registry.snapshot()).nodes}
    finally:
        await state.aclose()


class FetchLoop:
    """An IMAP client fetching every message over and over in a thread; each round's
    outcome is kept: the UIDs that came back equal to what was delivered."""

    def __init__(self, config: Config, user: str, expected: dict[int, bytes]) -> None:
        self.host, self.port = parse_hostport(config.imapd.imap_listen)
        self.user = user
        self.expected = expected
        #: (when the round began, messages read back exactly)
        self.rounds: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self._connect()
        while not self.stop.is_set():
            began, good = time.monotonic(), 0
            try:
                for uid, raw in self.expected.items():
                    typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
                    if typ == "OK" and data and isinstance(data[0], tuple) \
                            and data[0][1] == raw:
                        good += 1
            except (imaplib.IMAP4.error, OSError):
                client = self._connect()
            self.rounds.append((began, good))
        client.logout()

    def _connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.port)
        client.login(self.user, "secret")
        client.select("INBOX")
        return client

    def wait_for(self, ok: bool, since: float, timeout: float) -> None:
        """Wait for a round, begun after ``since``, where every message (ok) or none
        (not ok) read back."""
        deadline = time.monotonic() + timeout
        want = len(self.expected) if ok else 0
        while not any(t > since and good == want for t, good in list(self.rounds)):
            assert self.thread.is_alive(), "the fetch loop died"
            assert time.monotonic() < deadline, f"no round with {want} good: {self.rounds[-5:]}"
            time.sleep(0.1)


def flush_every_master(config: Config) -> int:
    masters = 0
    auth = redis_auth(config.cluster).client_kwargs()
    for address in config.cluster.redis_nodes:
        host, port = parse_hostport(address)
        client = redis.Redis(host=host, port=port, **auth)
        try:
            if client.info("replication")["role"] == "master":
                client.flushall()
                masters += 1
        finally:
            client.close()
    return masters


def test_rebuild_after_flushall_of_every_master(installation: DevCluster) -> None:
    """With every Redis master flushed during an IMAP fetch loop, fetches fail; once
    objmail index rebuild has run, every message reads back byte-exact again and every
    object server has its old node number."""
    config = installation.config
    mail = Mail(config)
    user = f"rebuild{time.time_ns() % 10**9}"
    mail.create_user(user)
    raws = corpus_messages()
    delivered = mail.deliver(user, raws)
    expected = {d.uid: raw for d, raw in zip(delivered, raws, strict=True)}
    before = asyncio.run(_numbers(config))
    assert sorted(before.values()) == [1, 2, 3, 4] and before["ghost"] == 1

    loop = FetchLoop(config, user, expected)
    loop.thread.start()
    try:
        loop.wait_for(True, 0.0, timeout=30)
        flushed_at = time.monotonic()
        assert flush_every_master(config) == 3
        loop.wait_for(False, flushed_at, timeout=30)
        rebuild = subprocess.run(
            [sys.executable, "-m", "ops.cli", "--config", str(installation.config_path),
             "index", "rebuild", "--json"],
            capture_output=True, text=True, timeout=300, check=False)
        assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
        done_at = time.monotonic()
        loop.wait_for(True, done_at, timeout=30)
    finally:
        loop.stop.set()
        loop.thread.join(timeout=60)
    result = json.loads(rebuild.stdout)
    after = asyncio.run(_numbers(config))
    assert after == {k: v for k, v in before.items() if k != "ghost"}
    assert {(n["id"], n["number"]) for n in result["registered_again"]} == set(after.items())
    assert result["finished"] and result["bad"] == 0 and result["skipped"] == []
    assert result["indexed"] >= 2 * len(expected)  # two replicas of at least a blob each
    # A fresh client reads every message exactly as delivered.
    fresh = FetchLoop(config, user, expected)
    client = fresh._connect()
    try:
        for uid, raw in expected.items():
            typ, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == raw, uid
    finally:
        client.logout()
