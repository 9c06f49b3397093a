"""An objstore protocol wired to a store on StringTransport, for adapter tests, and the
store backends the fast semantic tests run over.

Writes can be held pending (:class:`HeldCommitter`) to test ordering and back-pressure;
by default they commit inline, which keeps tests deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport

from objstore.handler import Handler
from objstore.items import BaseStore, Callback, WriteOp
from objstore.lmdbstore import LmdbStore
from objstore.memstore import MemStore
from objstore.server import ObjstoreFactory, ObjstoreProtocol
from objstore.stats import Counters, HotKeys, totals
from ops.config import ObjstoreConfig

MIB = 1024 * 1024
#: The backends semantic tests are parametrized over: the seam holds if both pass.
BACKENDS = ("lmdb", "memory")


class FakeClock:
    """A unix clock the test sets by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_store(backend: str, path: Path, *, max_item_size: int = MIB,
               clock: Callable[[], float], map_size: int = 64 * MIB) -> BaseStore:
    """A fresh store of the named backend (``path`` is used by LMDB only)."""
    if backend == "lmdb":
        return LmdbStore(path, map_size=map_size, max_item_size=max_item_size, clock=clock)
    if backend == "memory":
        return MemStore(max_item_size=max_item_size, clock=clock)
    raise ValueError(f"unknown backend {backend!r}")


class HeldCommitter:
    """Queues writes until :meth:`release` commits them as one batch."""

    def __init__(self, storage: BaseStore) -> None:
        self.storage = storage
        self.queue: list[tuple[WriteOp, Callback]] = []

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        self.queue.append((op, done))

    def release(self) -> None:
        batch, self.queue = self.queue, []
        results = self.storage.apply_batch([op for op, _ in batch])
        for (_, done), res in zip(batch, results, strict=True):
            done(res)

    def stop(self) -> None:
        self.release()


class Harness:
    """A factory over a store (a real LMDB one in ``tmp_path`` unless ``backend`` says
    otherwise) and a ``task.Clock``."""

    def __init__(self, tmp_path: Path, backend: str = "lmdb", **config: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.backend = backend
        self.config = dataclasses.replace(ObjstoreConfig(map_size=64 * MIB), **config)
        self.storage = open_store(backend, tmp_path / "lmdb", map_size=self.config.map_size,
                                  max_item_size=self.config.max_item_size,
                                  clock=self.clock.seconds)
        self.counters = Counters()
        self.hot = HotKeys(sample=1)
        self.handler = Handler(self.storage, self.config, self.counters, self.hot,
                               lambda: totals([self.counters.snapshot()]),
                               clock=self.clock.seconds, node_id="test-node")
        self.factory = ObjstoreFactory(self.handler, self.config, self.counters, self.clock)
        self.handler.connections = self.factory.describe_connections

    def hold_writes(self) -> HeldCommitter:
        committer = HeldCommitter(self.storage)
        self.storage.use_committer(committer)
        return committer

    def connect(self) -> tuple[ObjstoreProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def close(self) -> None:
        self.storage.use_committer(None)
        self.storage.close()


def exchange(proto: ObjstoreProtocol, transport: StringTransport, data: bytes) -> bytes:
    """Send ``data`` and return what the server wrote since the last call."""
    proto.dataReceived(data)
    out = transport.value()
    transport.clear()
    return bytes(out)
