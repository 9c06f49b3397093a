"""A frontend's cache of hot blobs: a bounded in-memory LRU, optionally backed by LMDB.

Blobs are immutable (the id is the content hash), so a cached blob never goes
stale: there is nothing to invalidate, only to evict.  The memory tier holds
decoded content; the optional disk tier (an LMDB file on the frontend's local
disk) survives restarts and holds more.  Disk entries are re-verified against
their id when read, so a damaged cache file costs a miss, never bad data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from director.blobids import BlobIds


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    disk_hits: int = 0
    evictions: int = 0


class MemoryCache:
    """LRU bounded by total bytes; entries larger than 1/8 of the bound are not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        size = len(data)
        if size > self.max_bytes >> 3 or key in self._items:
            return
        self._items[key] = data
        self._bytes += size
        while self._bytes > self.max_bytes:
            _old, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted)
            self.evictions += 1

    def discard(self, key: str) -> None:
        data = self._items.pop(key, None)
        if data is not None:
            self._bytes -= len(data)


class DiskCache:
    """Blobs in a local LMDB file, evicted oldest-written first when full.

    Eviction order is insertion order (a sequence number prefix), which for an
    immutable-blob cache is a fair approximation of LRU at no write cost per hit.
    """

    def __init__(self, path: Path, max_bytes: int, ids: BlobIds) -> None:
        import lmdb

        self._ids = ids
        path.mkdir(parents=True, exist_ok=True)
        # The map is sized above the bound so eviction, not MapFullError, limits it.
        self._env = lmdb.open(str(path), map_size=max(max_bytes * 2, 1 << 24), max_dbs=2,
                              sync=False, metasync=False, writemap=False)
        self._blobs = self._env.open_db(b"blobs")
        self._order = self._env.open_db(b"order")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        with self._env.begin() as txn:
            self._bytes = sum(len(v) for _k, v in txn.cursor(db=self._blobs))
            last = txn.cursor(db=self._order)
            self._seq = int.from_bytes(last.key(), "big") if last.last() else 0

    def get(self, key: str) -> bytes | None:
        with self._env.begin(db=self._blobs) as txn:
            data = txn.get(key.encode())
        if data is None:
            return None
        if not self._ids.matches(key, data):
            self.discard(key)
            return None
        return bytes(data)

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes >> 3:
            return
        with self._lock, self._env.begin(write=True) as txn:
            if txn.get(key.encode(), db=self._blobs) is not None:
                return
            self._seq += 1
            txn.put(key.encode(), data, db=self._blobs)
            txn.put(self._seq.to_bytes(8, "big"), key.encode(), db=self._order)
            self._bytes += len(data)
            cursor = txn.cursor(db=self._order)
            while self._bytes > self.max_bytes and cursor.first():
                old = cursor.value()
                cursor.delete()
                evicted = txn.pop(old, db=self._blobs)
                if evicted is not None:
                    self._bytes -= len(evicted)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def discard(self, key: str) -> None:
        with self._lock, self._env.begin(write=True) as txn:
            data = txn.pop(key.encode(), db=self._blobs)
            if data is not None:
                self._bytes -= len(data)

    def close(self) -> None:
        self._env.close()


class BlobCache:
    """Memory first, then disk; only whole, verified blobs are ever put here."""

    def __init__(self, memory_bytes: int, disk: DiskCache | None = None) -> None:
        self.memory = MemoryCache(memory_bytes)
        self.disk = disk
        self.stats = CacheStats()

    def get(self, key: str) -> bytes | None:
        data = self.memory.get(key)
        if data is not None:
            self.stats.hits += 1
            return data
        if self.disk is not None:
            data = self.disk.get(key)
            if data is not None:
                self.stats.hits += 1
                self.stats.disk_hits += 1
                self.memory.put(key, data)
                return data
        self.stats.misses += 1
        return None

    def put(self, key: str, data: bytes) -> None:
        self.memory.put(key, data)
        if self.disk is not None:
            self.disk.put(key, data)

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
