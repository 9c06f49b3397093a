"""The replicating blob client: put, get, exists and delete of content-addressed blobs.

Used in-process by imapd, the LMTP delivery path and ops tools (asyncio), and by
scripts through :class:`SyncBlobClient`.

Theory of operation.

*put(data)*: the id is the SHA-256 of the content.  If the location index knows
the id, nothing is uploaded (dedup).  Otherwise the blob is encoded (zlib-ng,
optional AES-GCM; see :mod:`director.codec`), placed by weighted rendezvous
hashing on ``replicas`` active nodes in distinct zones, and written to them in
parallel.  A target that fails is replaced by the next fallback candidate.  The
put succeeds once ``write_quorum`` nodes acknowledged (STORED means committed to
disk on the object server); the locations are then recorded in the index, and a
repair entry is queued when fewer than ``replicas`` copies were made.  Blobs larger
than an object server's item size are cut into chunks stored next to a manifest.

*get(id)*: memory/disk cache, else the index's locations, ordered live-and-idle
first; each replica is tried in turn (with a per-request timeout), its bytes are
decoded and their hash verified.  A replica that errs, times out, misses or returns
bad bytes is skipped and queued for repair; the first verified copy wins.

The registry snapshot (nodes, states, load) is refreshed at most every
:data:`REGISTRY_REFRESH` seconds, lazily, by whichever call finds it stale.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from director.cache import BlobCache, DiskCache
from director.codec import (
    ENVELOPE_SLACK,
    FLAG_MANIFEST,
    BlobCodec,
    CodecError,
    Manifest,
    blob_id,
    chunk_key,
    load_key,
)
from director.errors import BlobCorrupt, BlobNotFound, BlobUnavailable, DirectorError
from director.index import LocationIndex
from director.memcache_client import NodeAddress, NodeClient, NodeError
from director.nodes import Node, NodeState
from director.placement import PlacementPolicy, Placer
from director.redisstate import RedisState
from director.registry import Registry, RegistrySnapshot
from director.repairqueue import RepairQueue
from ops.config import Config, parse_hostport

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a registry snapshot is used before it is read again.
REGISTRY_REFRESH = 2.0
#: Chunks of one chunked blob read or written at the same time.
CHUNK_PARALLELISM = 4


@dataclass
class ClientStats:
    """Counters for metrics and tests."""

    puts: int = 0
    dedup_hits: int = 0
    uploads: int = 0
    bytes_uploaded: int = 0
    gets: int = 0
    failovers: int = 0
    bad_replicas: int = 0
    repairs_queued: int = 0
    by_node_errors: dict[str, int] = field(default_factory=dict)


class BlobClient:
    """Blob access for one process; build with :meth:`open`, close with :meth:`aclose`."""

    def __init__(self, config: Config, index: LocationIndex, registry: Registry,
                 repair: RepairQueue, *, codec: BlobCodec | None = None,
                 cache: BlobCache | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.dconf = config.director
        self.index = index
        self.registry = registry
        self.repair = repair
        self.codec = codec or BlobCodec(self.dconf.compression_level)
        self.cache = cache or BlobCache(self.dconf.cache_bytes)
        self.stats = ClientStats()
        self._clock = clock
        self._policy = PlacementPolicy(replicas=self.dconf.replicas,
                                       tier=self.dconf.write_tier or None)
        self._snapshot: RegistrySnapshot | None = None
        self._placer: Placer | None = None
        self._snapshot_at = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._nodes: dict[str, NodeClient] = {}
        # Largest stored value an object server takes, minus room for the envelope.
        self.chunk_size = config.objstore.max_item_size - ENVELOPE_SLACK

    @classmethod
    async def open(cls, config: Config) -> BlobClient:
        """Connect to Redis Cluster; object-server connections open on first use."""
        dconf = config.director
        state = await RedisState.open(config.cluster, dconf)
        key = load_key(dconf.encryption_key_file) if dconf.encryption_key_file else None
        disk = (DiskCache(Path(dconf.disk_cache_dir), dconf.disk_cache_bytes)
                if dconf.disk_cache_dir else None)
        return cls(config, state.index, state.registry, state.repairs,
                   codec=BlobCodec(dconf.compression_level, key),
                   cache=BlobCache(dconf.cache_bytes, disk))

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.close()
        self._nodes.clear()
        self.cache.close()
        await self.index.aclose()

    # -- registry -----------------------------------------------------------------------

    async def snapshot(self, *, force: bool = False) -> RegistrySnapshot:
        """The current registry snapshot, refreshed when older than REGISTRY_REFRESH."""
        if not force and self._snapshot is not None and \
                self._clock() - self._snapshot_at < REGISTRY_REFRESH:
            return self._snapshot
        async with self._refresh_lock:
            if force or self._snapshot is None or \
                    self._clock() - self._snapshot_at >= REGISTRY_REFRESH:
                self._snapshot = await self.registry.snapshot()
                self._placer = self._snapshot.placer(self._policy)
                self._snapshot_at = self._clock()
        return self._snapshot

    async def _placer_now(self) -> Placer:
        await self.snapshot()
        assert self._placer is not None
        return self._placer

    def node_client(self, node: Node) -> NodeClient:
        client = self._nodes.get(node.address)
        if client is None:
            host, port = parse_hostport(node.address)
            client = NodeClient(NodeAddress(host, port), pool_size=self.dconf.pool_size,
                                timeout=self.dconf.timeout,
                                max_value=self.config.objstore.max_item_size + 1024)
            self._nodes[node.address] = client
        return client

    def _node_failed(self, node: Node, exc: BaseException) -> None:
        self.stats.by_node_errors[node.id] = self.stats.by_node_errors.get(node.id, 0) + 1
        log.warning("object server %s (%s): %s", node.id, node.address, exc)

    # -- put ----------------------------------------------------------------------------

    async def put(self, data: bytes) -> str:
        """Store ``data`` (or find it stored already); return its id.

        :raises BlobUnavailable: fewer than ``write_quorum`` object servers took it.
        """
        return (await self.put_many([data]))[0]

    async def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs: one index lookup for all, uploads in parallel."""
        ids = [blob_id(b) for b in blobs]
        self.stats.puts += len(blobs)
        known = await self.index.lookup(ids)
        todo: dict[str, bytes] = {}
        for bid, data in zip(ids, blobs, strict=True):
            if known.get(bid):
                self.stats.dedup_hits += 1
            else:
                todo.setdefault(bid, data)
        if todo:
            await asyncio.gather(*(self._upload(bid, data) for bid, data in todo.items()))
        return ids

    async def _upload(self, bid: str, data: bytes) -> None:
        placer = await self._placer_now()
        candidates = placer.candidates(bid)
        if len(candidates) < self.dconf.write_quorum:
            raise BlobUnavailable(
                f"only {len(candidates)} active object server(s) in tier "
                f"{self.dconf.write_tier!r}; write_quorum is {self.dconf.write_quorum}")
        items = self._encode(bid, data)
        want = min(self.dconf.replicas, len(candidates))
        queue = list(candidates)
        done: list[Node] = []

        async def slot() -> None:
            while queue:
                node = queue.pop(0)
                try:
                    await self._write_items(node, items)
                except (NodeError, OSError) as exc:
                    self._node_failed(node, exc)
                    continue
                done.append(node)
                return

        await asyncio.gather(*(slot() for _ in range(want)))
        if len(done) < self.dconf.write_quorum:
            raise BlobUnavailable(
                f"blob {bid}: only {len(done)} of {self.dconf.write_quorum} required object "
                f"servers took the write")
        await self.index.add_locations(bid, [n.number for n in done])
        self.stats.uploads += 1
        self.stats.bytes_uploaded += len(data)
        if len(done) < self.dconf.replicas:
            await self._queue_repair([bid])

    def _encode(self, bid: str, data: bytes) -> list[tuple[str, bytes, int]]:
        """Object-server (key, value, flags) items for one blob: chunks, then the head."""
        if len(data) <= self.chunk_size:
            payload, flags = self.codec.encode(data, bid)
            return [(bid, payload, flags)]
        items = []
        chunk_ids = []
        for n, start in enumerate(range(0, len(data), self.chunk_size)):
            chunk = data[start:start + self.chunk_size]
            chunk_ids.append(hashlib.sha256(chunk).hexdigest())
            payload, flags = self.codec.encode(chunk, bid)
            items.append((chunk_key(bid, n), payload, flags))
        head, flags = self.codec.encode_manifest(Manifest(len(data), tuple(chunk_ids)), bid)
        items.append((bid, head, flags))
        return items

    async def _write_items(self, node: Node, items: list[tuple[str, bytes, int]]) -> None:
        client = self.node_client(node)
        # Chunks first, the head last: a head that exists implies its chunks do.
        *chunks, head = items
        sem = asyncio.Semaphore(CHUNK_PARALLELISM)

        async def write(key: str, value: bytes, flags: int) -> None:
            async with sem:
                if not await client.set(key.encode(), value, flags):
                    raise NodeError(f"{node.address}: set {key} not stored")

        if chunks:
            await asyncio.gather(*(write(k, v, f) for k, v, f in chunks))
        await write(*head)

    async def _queue_repair(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        try:
            self.stats.repairs_queued += await self.repair.add(ids)
        except DirectorError as exc:
            # The repairer's inventory pass finds under-replicated blobs anyway.
            log.warning("could not queue %d blob(s) for repair: %s", len(ids), exc)

    # -- get ----------------------------------------------------------------------------

    async def get(self, bid: str) -> bytes:
        """The verified content of blob ``bid``.

        :raises BlobNotFound: the index does not know it.
        :raises BlobUnavailable: no replica could serve it.
        :raises BlobCorrupt: every replica that answered had bad bytes.
        """
        cached = self.cache.get(bid)
        if cached is not None:
            return cached
        self.stats.gets += 1
        locations = await self.index.locations(bid)
        data = await self._read(bid, locations)
        self.cache.put(bid, data)
        return data

    async def get_many(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Several blobs; one index lookup for those not cached, reads in parallel."""
        out: dict[str, bytes] = {}
        missing = []
        for bid in dict.fromkeys(ids):
            cached = self.cache.get(bid)
            if cached is not None:
                out[bid] = cached
            else:
                missing.append(bid)
        if missing:
            self.stats.gets += len(missing)
            locations = await self.index.lookup(missing)
            datas = await asyncio.gather(*(self._read(b, locations.get(b, ()))
                                           for b in missing))
            for bid, data in zip(missing, datas, strict=True):
                self.cache.put(bid, data)
                out[bid] = data
        return out

    async def iter_chunks(self, bid: str) -> AsyncIterator[bytes]:
        """The content of ``bid`` in pieces, without holding a chunked blob whole."""
        cached = self.cache.get(bid)
        if cached is not None:
            yield cached
            return
        locations = await self.index.locations(bid)
        replicas = await self._ordered(bid, locations)
        value, flags, _node = await self._first_good(bid, replicas, whole=False)
        if not flags & FLAG_MANIFEST:
            yield value
            return
        manifest = Manifest.from_bytes(value)
        for n, cid in enumerate(manifest.chunk_ids):
            yield await self._read_chunk(bid, n, cid, replicas)

    async def _ordered(self, bid: str, numbers: Sequence[int]) -> list[Node]:
        if not numbers:
            raise BlobNotFound(f"blob {bid} is not in the index")
        snap = await self.snapshot()
        nodes = [n for n in snap.resolve(numbers) if n.state is not NodeState.REMOVED]
        if len(nodes) < len(numbers):
            # A node added since the snapshot: read the registry again once.
            snap = await self.snapshot(force=True)
            nodes = [n for n in snap.resolve(numbers) if n.state is not NodeState.REMOVED]

        def rank(node: Node) -> tuple[int, float]:
            # Live nodes first, least busy first; "down" ones are still worth a try
            # last (a late load report is not a dead disk).
            live = 0 if node.readable else 1
            ops = node.report.ops_per_sec if node.report else 0.0
            return (live, ops)

        return sorted(nodes, key=rank)

    async def _read(self, bid: str, numbers: Sequence[int]) -> bytes:
        replicas = await self._ordered(bid, numbers)
        value, _flags, _node = await self._first_good(bid, replicas, whole=True)
        return value

    async def _first_good(self, bid: str, replicas: list[Node], *,
                          whole: bool) -> tuple[bytes, int, Node]:
        """Read ``bid`` from the first replica that has good bytes.

        :param whole: reassemble a chunked blob (else return its manifest).
        """
        errors: list[str] = []
        corrupt = 0
        bad: list[Node] = []
        for i, node in enumerate(replicas):
            if i:
                self.stats.failovers += 1
            try:
                got = await self.node_client(node).get(bid.encode())
                if got is None:
                    raise NodeError(f"{node.address}: does not have it")
                data = self.codec.decode(got.value, got.flags, bid)
                if got.flags & FLAG_MANIFEST:
                    if not whole:
                        Manifest.from_bytes(data)  # validates
                        return data, got.flags, node
                    data = await self._read_chunked(bid, Manifest.from_bytes(data),
                                                    [node, *[r for r in replicas if r != node]])
                if blob_id(data) != bid:
                    raise CodecError("content does not match its id")
            except CodecError as exc:
                corrupt += 1
                bad.append(node)
                self.stats.bad_replicas += 1
                errors.append(f"{node.id}: {exc}")
                log.error("blob %s on %s (%s) is corrupt: %s", bid, node.id, node.address, exc)
                continue
            except (NodeError, OSError, BlobUnavailable) as exc:
                self._node_failed(node, exc)
                bad.append(node)
                errors.append(f"{node.id}: {exc}")
                continue
            if bad:
                await self._queue_repair([bid])
            return data, got.flags, node
        if bad:
            await self._queue_repair([bid])
        if corrupt and corrupt == len(errors):
            raise BlobCorrupt(f"blob {bid}: every replica is corrupt ({'; '.join(errors)})")
        raise BlobUnavailable(f"blob {bid}: no replica could serve it ({'; '.join(errors)})")

    async def _read_chunked(self, bid: str, manifest: Manifest, replicas: list[Node]) -> bytes:
        sem = asyncio.Semaphore(CHUNK_PARALLELISM)

        async def one(n: int, cid: str) -> bytes:
            async with sem:
                return await self._read_chunk(bid, n, cid, replicas)

        parts = await asyncio.gather(*(one(n, c) for n, c in enumerate(manifest.chunk_ids)))
        data = b"".join(parts)
        if len(data) != manifest.size:
            raise CodecError(f"chunks add up to {len(data)} bytes, manifest says "
                             f"{manifest.size}")
        return data

    async def _read_chunk(self, bid: str, n: int, cid: str, replicas: list[Node]) -> bytes:
        key = chunk_key(bid, n)
        errors = []
        for node in replicas:
            try:
                got = await self.node_client(node).get(key.encode())
                if got is None:
                    raise NodeError(f"{node.address}: chunk {n} missing")
                data = self.codec.decode(got.value, got.flags, key)
                if hashlib.sha256(data).hexdigest() != cid:
                    raise CodecError(f"chunk {n} does not match the manifest")
                return data
            except (NodeError, OSError, CodecError) as exc:
                errors.append(f"{node.id}: {exc}")
                self._node_failed(node, exc)
        raise BlobUnavailable(f"blob {bid}: chunk {n} unreadable ({'; '.join(errors)})")

    # -- exists / delete ----------------------------------------------------------------

    async def exists(self, bid: str) -> bool:
        """True when the index knows ``bid`` (it was stored and not collected)."""
        return bool(await self.index.locations(bid))

    async def delete(self, bid: str) -> bool:
        """Remove ``bid`` from every object server holding it and from the index.

        Meant for gc, which has checked that nothing references it.  Copies on
        unreachable nodes are found later by inventory reconciliation.
        """
        numbers = await self.index.locations(bid)
        if not numbers:
            return False
        snap = await self.snapshot()
        nodes = snap.resolve(numbers)

        async def drop(node: Node) -> None:
            client = self.node_client(node)
            try:
                got = await client.get(bid.encode())
                if got is not None and got.flags & FLAG_MANIFEST:
                    manifest = Manifest.from_bytes(self.codec.decode(got.value, got.flags, bid))
                    for n in range(len(manifest.chunk_ids)):
                        await client.delete(chunk_key(bid, n).encode())
                await client.delete(bid.encode())
            except (NodeError, OSError, CodecError) as exc:
                self._node_failed(node, exc)

        await asyncio.gather(*(drop(n) for n in nodes))
        self.cache.memory.discard(bid)
        if self.cache.disk is not None:
            self.cache.disk.discard(bid)
        return await self.index.delete(bid)


class SyncBlobClient:
    """A blocking facade for scripts: runs a private event loop."""

    def __init__(self, config: Config) -> None:
        self._loop = asyncio.new_event_loop()
        self.client = self._run(BlobClient.open(config))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def put(self, data: bytes) -> str:
        return self._run(self.client.put(data))

    def get(self, bid: str) -> bytes:
        return self._run(self.client.get(bid))

    def exists(self, bid: str) -> bool:
        return self._run(self.client.exists(bid))

    def delete(self, bid: str) -> bool:
        return self._run(self.client.delete(bid))

    def close(self) -> None:
        self._run(self.client.aclose())
        self._loop.close()

    def __enter__(self) -> SyncBlobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
