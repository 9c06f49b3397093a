"""An objstore protocol wired to a real store on StringTransport, for adapter tests.

Writes can be held pending (:class:`HeldCommitter`) to test ordering and back-pressure;
by default they commit inline, which keeps tests deterministic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.testing import StringTransport

from objstore.handler import Handler
from objstore.server import ObjstoreFactory, ObjstoreProtocol
from objstore.stats import Counters, HotKeys, totals
from objstore.storage import Callback, Result, Storage, WriteOp
from ops.config import ObjstoreConfig

MIB = 1024 * 1024


class HeldCommitter:
    """Queues writes until :meth:`release` commits them as one batch."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.queue: list[tuple[WriteOp, Callback | None]] = []

    def submit(self, op: WriteOp, callback: Callback | None) -> None:
        self.queue.append((op, callback))

    def release(self) -> None:
        batch, self.queue = self.queue, []
        results: list[Result] = self.storage.apply_batch([op for op, _ in batch])
        for (_, cb), res in zip(batch, results, strict=True):
            if cb is not None:
                cb(res)

    def stop(self) -> None:
        self.release()


class Harness:
    """A factory over a real LMDB store in ``tmp_path`` and a ``task.Clock``."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.config = dataclasses.replace(ObjstoreConfig(map_size=64 * MIB), **config)
        self.storage = Storage(tmp_path / "lmdb", map_size=self.config.map_size,
                               max_item_size=self.config.max_item_size,
                               clock=self.clock.seconds)
        self.counters = Counters()
        self.hot = HotKeys(sample=1)
        self.handler = Handler(self.storage, self.config, self.counters, self.hot,
                               lambda: totals([self.counters.snapshot()]),
                               clock=self.clock.seconds, node_id="test-node")
        self.factory = ObjstoreFactory(self.handler, self.config, self.counters, self.clock)

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
