"""Unit tests of the frontend blob cache: LRU bounds, the LMDB tier, verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

from director.blobids import BlobIds
from director.cache import BlobCache, DiskCache, MemoryCache
from director.keyring import Keyring

IDS = BlobIds()
blob_id = IDS.id_of


def blob(i: int, size: int = 100) -> tuple[str, bytes]:
    data = (b"%06d" % i) * (size // 6 + 1)
    data = data[:size]
    return blob_id(data), data


def test_memory_cache_is_bounded_lru() -> None:
    """The memory tier evicts least recently used entries to stay within its bytes."""
    cache = MemoryCache(1000)
    entries = [blob(i) for i in range(10)]
    for key, data in entries:
        cache.put(key, data)
    assert cache.size == 1000 and len(cache) == 10
    cache.get(entries[0][0])  # now most recently used
    key, data = blob(99)
    cache.put(key, data)
    assert cache.size <= 1000
    assert cache.get(entries[0][0]) == entries[0][1]
    assert cache.get(entries[1][0]) is None
    assert cache.evictions == 1


def test_memory_cache_skips_huge_entries() -> None:
    """An entry above 1/8 of the bound is not cached (it would flush everything)."""
    cache = MemoryCache(800)
    key, data = blob(1, 101)
    cache.put(key, data)
    assert cache.get(key) is None


def test_disk_cache_survives_reopen_and_evicts(tmp_path: Path) -> None:
    """The LMDB tier keeps entries across reopen and stays within its bound."""
    disk = DiskCache(tmp_path / "c", 8000, IDS)
    entries = [blob(i, 900) for i in range(20)]
    for key, data in entries:
        disk.put(key, data)
    disk.close()
    disk = DiskCache(tmp_path / "c", 8000, IDS)
    kept = [k for k, _d in entries if disk.get(k) is not None]
    assert 0 < len(kept) < 20
    assert kept == [k for k, _d in entries][-len(kept):]  # oldest written go first
    assert disk.get(entries[-1][0]) == entries[-1][1]
    disk.close()


def test_disk_cache_never_serves_bad_bytes(tmp_path: Path) -> None:
    """A disk entry whose bytes no longer match its id is dropped, not served."""
    disk = DiskCache(tmp_path / "c", 1 << 20, IDS)
    key, data = blob(7)
    wrong_key, _ = blob(8)
    disk.put(wrong_key, data)  # bytes stored under an id they do not hash to
    assert disk.get(wrong_key) is None
    disk.put(key, data)
    assert disk.get(key) == data
    disk.close()


def test_blob_cache_counts_hits_and_promotes_from_disk(tmp_path: Path) -> None:
    """Hits from disk are promoted to memory; hits and misses are counted."""
    cache = BlobCache(1 << 20, DiskCache(tmp_path / "c", 1 << 20, IDS))
    key, data = blob(3)
    assert cache.get(key) is None
    cache.put(key, data)
    cache.memory.discard(key)
    assert cache.get(key) == data
    assert cache.get(key) == data
    assert (cache.stats.hits, cache.stats.misses, cache.stats.disk_hits) == (2, 1, 1)
    cache.close()


def test_keyed_disk_cache_serves_keyed_and_legacy_ids(tmp_path: Path) -> None:
    """With keyed ids the disk tier serves content under its keyed id and under its
    legacy (plain SHA-256) id, and drops it under any other id."""
    keyed = BlobIds(Keyring.generate().id_key)
    disk = DiskCache(tmp_path / "c", 1 << 20, keyed)
    data = b"cached content " * 40
    other = keyed.id_of(b"other content")
    for key in (keyed.id_of(data), hashlib.sha256(data).hexdigest(), other):
        disk.put(key, data)
    assert disk.get(keyed.id_of(data)) == data
    assert disk.get(hashlib.sha256(data).hexdigest()) == data
    assert disk.get(other) is None
    disk.close()
