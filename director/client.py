"""The replicating blob client: put, get, exists and delete of content-addressed blobs.

Used in-process (asyncio) by imapd, the LMTP delivery path, directord and ops tools.

Theory of operation.

*Keys*: :meth:`BlobClient.open` loads the keyring the config names (refusing to run
without one unless ``director.allow_plaintext``), checks it against the fingerprints the
installation recorded in Redis (:mod:`director.keyregistry`), and builds the keyed
:class:`BlobIds` and the sealing :class:`BlobCodec` from it.

*put(data)*: the id is computed from the content (:mod:`director.blobids`; a caller
that named its blobs with :meth:`BlobClient.id_of` already passes them named, through
:meth:`BlobClient.put_named`, and they are not hashed again).  If the location index knows
the id, nothing is uploaded (dedup).  Otherwise the blob is encoded (zlib-ng, then
AES-GCM under the keyring's current key; see :mod:`director.codec`), placed by weighted rendezvous
hashing on ``replicas`` active nodes in distinct zones (:class:`PlacementPolicy`, built
once from the config), and written to them in
parallel.  A target that fails is replaced by the next fallback candidate.  The
put succeeds once ``write_quorum`` nodes acknowledged (STORED means committed to
disk on the object server); the locations are then recorded in the index, and a
repair entry is queued when fewer than ``replicas`` copies were made.  Blobs larger
than an object server's item size are cut into chunks stored next to a manifest.

*get(id)*: memory/disk cache, else the index's locations, live ones first in a random
order weighted by inverse load (:func:`director.placement.read_order`: reads spread over
the replicas instead of herding onto the one that looked idlest), those in the process's
own ``site`` before the others (:meth:`director.sites.SitePolicy.local_first`); each
replica is tried
in turn (with a per-request timeout) and read by :class:`director.blobreader.BlobReader`,
which verifies the whole content against the id (a chunk missing or bad on that replica
is taken from another).  A replica that errs, times out, misses or returns bad bytes is
skipped and queued for repair; the first verified copy wins.

*Temperature*: every read of a blob (cache hits included) and every put is reported to
:attr:`BlobClient.temperature` (:class:`director.temperature.ReadSampler`): a dict update
on the call's path, written to Redis in batches by a task of the event loop.  With a
storage hierarchy (:mod:`director.tiers`) reads try the fastest tier holding a live copy
first.

*Items* (:meth:`BlobClient.put_item`, :meth:`BlobClient.get_items`...) are what
directord stores for plain memcached clients: a value and client flags under any key,
stored as given.  They take the same paths: placement and quorum writes on the key's
index id (:func:`director.keys.item_index_id`), failover reads in the same replica
order.  A blob id used as an item key is read and verified whole, as by get, before its
stored head is returned, and indexed with the blobs; any other key is indexed in the
items' own key space (:meth:`~director.index.LocationIndex.item_space`), which gc never
sweeps.

The registry snapshot (nodes, states, load) is refreshed at most every
:data:`REGISTRY_REFRESH` seconds, lazily, by whichever call finds it stale.  Between
refreshes a node can die: one that could not be reached, timed out or answered
garbage is *suspect* for :data:`SUSPECT_FOR` seconds, read last and written after the
other candidates, so a dead or hung server costs one failed request, not one per
request until its load report expires.  Index lookups and location records of
concurrent calls are coalesced into shared Redis batches (:class:`Coalescer`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from base64 import b64encode
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from director.blobids import BlobIds
from director.blobreader import (
    BlobReader,
    ChunkErrorHook,
    NotHeld,
    VerifiedBlob,
    stored_form,
)
from director.cache import BlobCache, DiskCache
from director.codec import ENVELOPE_SLACK, BlobCodec, CodecError, load_key
from director.config import DirectorConfig
from director.copier import delete_copy, write_items
from director.errors import (
    BadKeyFile,
    BlobCorrupt,
    BlobNotFound,
    BlobUnavailable,
    DirectorError,
    KeyUnavailable,
)
from director.flushboard import FlushBoard
from director.gcwatch import GcWatch
from director.index import LocationIndex
from director.itemreads import ItemReads
from director.itemstate import (
    CasClock,
    Copy,
    ItemState,
    ItemWrite,
    copy_after,
    flush_cutoff,
    is_flushed,
    ttl_to_exptime,
)
from director.keyregistry import KeyRegistry
from director.keyring import LEGACY_KEY_ID, Keyring, KeyringError, fingerprint, load_keyring
from director.keys import is_blob_id, item_index_id
from director.locationcache import LocationCache
from director.memcache_client import (
    OPEN_ACCESS,
    NodeAccess,
    NodeAddress,
    NodeClient,
    NodeError,
    NodeProtocolError,
    NodeRefused,
    NodeTimeout,
    NodeUnavailable,
)
from director.nodes import Node, NodeState
from director.placement import Placer, ReadOrder, read_order
from director.policy import PlacementPolicy
from director.redisconn import RetryPolicy
from director.redisstate import RedisState
from director.registry import Registry, RegistrySnapshot
from director.repairqueue import RepairQueue
from director.temperature import ReadSampler, TemperatureSettings, TemperatureStore
from director.tracking import InvalidationTracker
from objstore import protocol as p
from objstore.protocol import is_valid_key as is_text_key
from objstore.replies import Expect, MetaDebugReply, MetaReply, Reply, Value
from runtime.config import ClusterConfig, ConfigError, parse_hostport
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")

#: Seconds a registry snapshot is used before it is read again.
REGISTRY_REFRESH = 2.0
#: Seconds a node that failed to answer is tried after the others.
SUSPECT_FOR = 5.0
#: Times an item write's copies are redone when the primary changed while they were
#: written (by a concurrent write through another connection or directord).
COPY_ROUNDS = 3


@dataclass
class ClientStats:
    """Counters for metrics and tests."""

    puts: int = 0
    dedup_hits: int = 0
    uploads: int = 0
    bytes_uploaded: int = 0
    gets: int = 0
    item_puts: int = 0
    item_gets: int = 0
    failovers: int = 0
    bad_replicas: int = 0
    repairs_queued: int = 0
    by_node_errors: dict[str, int] = field(default_factory=dict)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception retrieved (nobody waits for it any more)."""
    if not fut.cancelled():
        fut.exception()


class Coalescer(Generic[A]):
    """Coalesces concurrent index operations into one Redis batch.

    While a batch is in flight, new requests wait and leave together in the next one; a
    request arriving when none is in flight leaves on the next turn of the loop, with
    whatever else arrived in that turn.  Under load, batches grow and the Python cost of
    a Redis round trip (a cluster pipeline, a ``WAIT`` for writes) is shared by many
    requests; idle, a request waits one loop turn.  Every waiter is answered only when
    its batch completed (for writes: acknowledged by a Redis replica).

    :param run: the batch operation: id -> argument in, id -> node numbers out.
    :param merge: combines two requests' arguments for the same id in one batch.
    """

    def __init__(self, run: Callable[[dict[str, A]], Awaitable[Mapping[str, tuple[int, ...]]]],
                 merge: Callable[[A, A], A]) -> None:
        self._run = run
        self._merge = merge
        self._waiting: dict[str, tuple[A, list[asyncio.Future[tuple[int, ...]]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    def _enqueue(self, loop: asyncio.AbstractEventLoop, bid: str, arg: A
                 ) -> asyncio.Future[tuple[int, ...]]:
        fut: asyncio.Future[tuple[int, ...]] = loop.create_future()
        queued = self._waiting.get(bid)
        if queued is None:
            self._waiting[bid] = (arg, [fut])
        else:
            self._waiting[bid] = (self._merge(queued[0], arg), [*queued[1], fut])
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return fut

    def start(self, bid: str, arg: A) -> asyncio.Future[tuple[int, ...]]:
        """:meth:`one` without a coroutine: the future of ``bid``'s node numbers, its
        operation already queued (a caller that stops waiting cancels the future)."""
        return self._enqueue(asyncio.get_running_loop(), bid, arg)

    async def many(self, requests: Mapping[str, A]) -> dict[str, tuple[int, ...]]:
        """Node numbers for each id after the operation (``()``: none)."""
        loop = asyncio.get_running_loop()
        mine: dict[str, asyncio.Future[tuple[int, ...]]] = {}
        for bid, arg in requests.items():
            mine[bid] = self._enqueue(loop, bid, arg)
        try:
            return {bid: await fut for bid, fut in mine.items()}
        except asyncio.CancelledError:
            # Nobody waits for the others any more: the batch skips done futures.
            for fut in mine.values():
                fut.cancel()
            raise

    async def one(self, bid: str, arg: A) -> tuple[int, ...]:
        return (await self.many({bid: arg}))[bid]

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                self.batches += 1
                try:
                    found = await self._run({bid: arg for bid, (arg, _f) in batch.items()})
                except BaseException as exc:  # each waiter gets the batch's error
                    for _arg, futs in batch.values():
                        for fut in futs:
                            if fut.done():
                                continue
                            if isinstance(exc, Exception):
                                fut.set_exception(exc)
                            else:
                                fut.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for bid, (_arg, futs) in batch.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(tuple(found.get(bid, ())))
        finally:
            self._task = None
            for _arg, futs in self._waiting.values():  # only when cancelled (loop closing)
                for fut in futs:
                    if not fut.done():
                        fut.cancel()


class BlobClient:
    """Blob access for one process; build with :meth:`open`, close with :meth:`aclose`."""

    def __init__(self, dconf: DirectorConfig, index: LocationIndex, registry: Registry,
                 repair: RepairQueue, *, codec: BlobCodec | None = None,
                 ids: BlobIds | None = None, cache: BlobCache | None = None,
                 key_registry: KeyRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 temperature: ReadSampler | None = None,
                 access: NodeAccess = OPEN_ACCESS,
                 flush_board: FlushBoard | None = None) -> None:
        self.dconf = dconf
        #: How connections to object servers are made (credentials, TLS).
        self.access = access
        self.index = index
        self.registry = registry
        self.repair = repair
        self.codec = codec or BlobCodec(self.dconf.compression_level)
        #: How blob ids are computed and checked (the one place: director.blobids).
        self.ids = ids or BlobIds()
        #: The installation's key fingerprints (director/keyregistry.py).
        self.keys = key_registry or KeyRegistry(index.runner, index.keys)
        #: Reads blobs back from object servers, verified whole; every reader uses it.
        self.reader = BlobReader(self.codec, self.ids, known_key=self.keys.known)
        #: Where copies go and how many: asked by puts, repair, drain and level.
        self.policy = PlacementPolicy.from_config(self.dconf)
        self.cache = cache or BlobCache(self.dconf.cache_bytes)
        #: The read temperature of the blobs (director/temperature.py): ``heat`` reads
        #: it, ``temperature`` is where this frontend reports the reads it serves.
        self.heat = TemperatureStore(index.runner, index.keys,
                                     TemperatureSettings.from_config(dconf), clock=wall_clock)
        self.temperature = temperature or ReadSampler(self.heat)
        self.stats = ClientStats()
        self._clock = clock
        #: Picks which replica a read tries first (:func:`director.placement.read_order`).
        self._rng = rng or random.Random()
        self._snapshot: RegistrySnapshot | None = None
        self._placer: Placer | None = None
        self._snapshot_at = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._nodes: dict[str, NodeClient] = {}
        self._suspect_until: dict[str, float] = {}
        self._lookups: Coalescer[None] = Coalescer(
            lambda reqs: index.lookup(list(reqs)), lambda a, _b: a)
        self._adds: Coalescer[frozenset[int]] = Coalescer(index.add_many, frozenset.union)
        #: The index of directord's plain-key items (a key space gc never sweeps).
        self.items = index.item_space()
        self._item_lookups: Coalescer[None] = Coalescer(
            lambda reqs: self.items.lookup(list(reqs)), lambda a, _b: a)
        #: Plain-item reads of a loop turn, served together (director/itemreads.py).
        self.item_reads = ItemReads(self)
        #: directord's location cache of plain items and what keeps it exact
        #: (director/tracking.py); None: every read looks its key up in Redis.
        self.tracker: InvalidationTracker | None = None
        self._item_adds: Coalescer[frozenset[int]] = Coalescer(self.items.add_many,
                                                               frozenset.union)
        # Plain items written whole: the entry becomes their new copies; the answer is
        # what it was (two sets of one key in one batch are both recorded: union).
        self._item_sets: Coalescer[frozenset[int]] = Coalescer(self.items.replace_many,
                                                               frozenset.union)
        self.gc_watch = GcWatch(index, clock=clock)
        #: Cas uniques of item writes (every copy of an item carries the same one).
        self.cas_clock = CasClock(wall_clock)
        self._wall = wall_clock
        #: The items' flush_all cut-off (unix seconds, 0 = none), read with the registry.
        self._flush_cutoff = 0.0
        #: The cut-off directord's workers share (director/flushboard.py), and the
        #: generation of it this process has taken.
        self._flush_board = flush_board
        self._board_seen = 0
        # Largest stored value an object server takes, minus room for the envelope.
        self.chunk_size = dconf.object_max_item_size - ENVELOPE_SLACK

    @classmethod
    async def open(cls, cluster: ClusterConfig, dconf: DirectorConfig, *,
                   retry: RetryPolicy | None = None,
                   auth: RedisAuth = NO_REDIS_AUTH,
                   access: NodeAccess | None = None,
                   flush_board: FlushBoard | None = None) -> BlobClient:
        """Connect to Redis Cluster; object-server connections open on first use.

        :param retry: how long Redis operations are retried (``objmail`` commands wait
            less than daemons).
        :param auth: Redis credentials (``runtime.secrets.load_credentials(cluster)``).
        :param access: credentials and TLS for the object servers; None reads the files
            ``dconf`` names (:meth:`NodeAccess.load`) now.
        :param flush_board: the ``flush_all`` cut-off shared with the other workers of a
            directord (None: this process alone).
        :raises KeyringError: see :func:`open_keys` and :meth:`KeyRegistry.check`.
        :raises ConfigError: a file ``dconf`` names is missing or malformed.
        """
        keyring, legacy = open_keys(dconf)
        if access is None:
            access = NodeAccess.load(dconf)
        state = await RedisState.open(cluster, dconf, retry=retry, auth=auth)
        try:
            keys = KeyRegistry(state.runner, state.index.keys)
            await keys.check(installation_fingerprints(keyring, legacy))
        except BaseException:
            await state.aclose()
            raise
        ids = BlobIds(keyring.id_key if keyring is not None else None)
        disk = (DiskCache(Path(dconf.disk_cache_dir), dconf.disk_cache_bytes, ids)
                if dconf.disk_cache_dir else None)
        return cls(dconf, state.index, state.registry, state.repairs,
                   codec=BlobCodec(dconf.compression_level, keyring, legacy_key=legacy),
                   ids=ids, cache=BlobCache(dconf.cache_bytes, disk), key_registry=keys,
                   access=access, flush_board=flush_board)

    async def start_location_cache(self, entries: int, cluster: ClusterConfig,
                                   auth: RedisAuth = NO_REDIS_AUTH) -> None:
        """Keep up to ``entries`` plain items' index entries in memory, invalidated by
        Redis (director/tracking.py); the item index's own writes invalidate at once."""
        cache = LocationCache(entries)
        tracker = InvalidationTracker(cache, cluster.redis_nodes,
                                      self.items.keys.item_bucket(""),
                                      auth=auth)
        await tracker.start()
        self.items.on_write = cache.invalidate
        self.tracker = tracker
        log.info("location cache of plain items: up to %d entries, tracking %d Redis "
                 "node(s)%s", entries, tracker.connections,
                 "" if cache.usable else " (not ready yet: reads go to Redis until it is)")

    def forget_location(self, index_id: str) -> None:
        """Drop ``index_id`` from the location cache (an item write that keeps its
        index entry, such as a touch, still makes its next read ask Redis)."""
        if self.tracker is not None:
            self.tracker.cache.drop(index_id)

    async def aclose(self) -> None:
        if self.tracker is not None:
            await self.tracker.aclose()
        await self.item_reads.close()
        await self.temperature.aclose()
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
                self._placer = self._snapshot.placer(self.policy)
                posted = self._board_generation()
                self._flush_cutoff = await self.items.flush_cutoff()
                # Redis has every cut-off posted before the read; one a worker posts
                # during it is newer than what was read, and is taken on the next read.
                self._board_seen = posted
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
                                max_value=self.dconf.object_max_item_size + 1024,
                                access=self.access)
            self._nodes[node.address] = client
        return client

    @property
    def item_lookups(self) -> Coalescer[None]:
        """Coalesced index lookups of plain items (:mod:`director.itemreads` uses them)."""
        return self._item_lookups

    def node_failed(self, node: Node, exc: BaseException) -> None:
        """Count a failed request to ``node``; one that could not answer is suspect for
        :data:`SUSPECT_FOR` seconds (read last, written after the others)."""
        self._node_failed(node, exc)

    def _node_failed(self, node: Node, exc: BaseException) -> None:
        self.stats.by_node_errors[node.id] = self.stats.by_node_errors.get(node.id, 0) + 1
        if not isinstance(exc, NodeUnavailable | NodeTimeout | NodeProtocolError | OSError):
            log.warning("object server %s (%s): %s", node.id, node.address, exc)
            return
        # Logged once per suspect period: a dead node must not flood the log.
        if not self._suspect(node):
            log.warning("object server %s (%s) is suspect for %.0fs: %s", node.id,
                        node.address, SUSPECT_FOR, exc)
        self._suspect_until[node.id] = self._clock() + SUSPECT_FOR

    def _suspect(self, node: Node) -> bool:
        """True while ``node`` recently failed to answer."""
        until = self._suspect_until.get(node.id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._suspect_until[node.id]
            return False
        return True

    # -- put ----------------------------------------------------------------------------

    async def put(self, data: bytes) -> str:
        """Store ``data`` (or find it stored already); return its id.

        :raises BlobUnavailable: fewer than ``write_quorum`` object servers took it.
        """
        return (await self.put_many([data]))[0]

    def id_of(self, content: bytes) -> str:
        """The id this client names ``content`` by (what :meth:`put` returns for it):
        callers that name blobs themselves use it, then pass them to :meth:`put_named`."""
        return self.ids.id_of(content)

    async def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store several blobs: one index lookup for all, uploads in parallel; their ids
        in order."""
        ids = [self.ids.id_of(b) for b in blobs]
        self.stats.puts += len(blobs)
        known = await self._store(dict(zip(ids, blobs, strict=True)))
        self.stats.dedup_hits += sum(bid in known for bid in ids)
        return ids

    async def put_named(self, blobs: Mapping[str, bytes],
                        named_by: Callable[[bytes], str]) -> None:
        """Store blobs that the caller named already (id -> content), as :meth:`put_many`
        does, without hashing them again when ``named_by`` is this client's
        :meth:`id_of` (the splitter names a message's blobs with it).  Any other function
        is not trusted: each id is computed again and must match.

        :raises ValueError: an id that is not its content's (a bug of the caller).
        """
        if named_by != self.id_of:
            for bid, data in blobs.items():
                if self.ids.id_of(data) != bid:
                    raise ValueError(f"blob named {bid} does not have that id here "
                                     f"(named by {named_by!r}, not by this client's ids)")
        self.stats.puts += len(blobs)
        self.stats.dedup_hits += len(await self._store(blobs))

    async def _store(self, blobs: Mapping[str, bytes]) -> set[str]:
        """Upload the blobs (id -> content) the index does not know yet; returns the ids
        it knew (dedup hits)."""
        ids = list(blobs)
        # Before the lookup: a running gc must not collect what this put dedups onto.
        await self.gc_watch.before_put(ids)
        known = await self._lookups.many(dict.fromkeys(ids))
        for bid in ids:
            self.temperature.wrote(bid)
        todo = {bid: data for bid, data in blobs.items() if not known.get(bid)}
        if todo:
            await asyncio.gather(*(self._upload(bid, data) for bid, data in todo.items()))
        return {bid for bid in ids if bid not in todo}

    async def _upload(self, bid: str, data: bytes) -> None:
        items = stored_form(self.codec, self.ids, bid, data, self.chunk_size)
        done = await self._place_and_write(
            f"blob {bid}", bid, lambda node: write_items(self.node_client(node), items))
        await self._adds.one(bid, frozenset(n.number for n in done))
        self.stats.uploads += 1
        self.stats.bytes_uploaded += len(data)
        if len(done) < self.policy.replicas or await self._crowded(done):
            await self._queue_repair([bid])

    async def _place_and_write(self, what: str, index_id: str,
                               write: Callable[[Node], Awaitable[None]],
                               candidates: list[Node] | None = None) -> list[Node]:
        """Run ``write`` on ``replicas`` nodes placed by ``index_id``, in parallel; a node
        that fails is replaced by the next placement candidate.

        :param candidates: :meth:`_write_candidates` of ``index_id``, when the caller
            has them already.
        :returns: the nodes that took the write, at least ``write_quorum`` of them.
        :raises BlobUnavailable: fewer than ``write_quorum`` did.
        """
        if candidates is None:
            candidates = await self._write_candidates(index_id)
        policy = self.policy
        want = min(policy.replicas, len(candidates))
        queue = list(candidates)
        done: list[Node] = []

        async def slot() -> None:
            while queue:
                node = queue.pop(0)
                try:
                    await write(node)
                except (NodeError, OSError) as exc:
                    self._node_failed(node, exc)
                    continue
                done.append(node)
                return

        await asyncio.gather(*(slot() for _ in range(want)))
        if len(done) < policy.write_quorum:
            raise BlobUnavailable(
                f"{what}: only {len(done)} of {policy.write_quorum} required object "
                f"servers took the write")
        return done

    async def _write_candidates(self, index_id: str) -> list[Node]:
        """Where a write of ``index_id`` goes, in order: the first ``replicas`` are its
        targets, the rest fallbacks; suspect nodes last.

        :raises BlobUnavailable: fewer than ``write_quorum`` active nodes.
        """
        placer = await self._placer_now()
        # Suspect nodes stay candidates, after the others (sorted() is stable).
        candidates = sorted(placer.candidates(index_id), key=self._suspect)
        policy = self.policy
        if len(candidates) < policy.write_quorum:
            raise BlobUnavailable(
                f"only {len(candidates)} active object server(s) in tier "
                f"{policy.tier!r}; write_quorum is {policy.write_quorum}")
        return candidates

    async def _crowded(self, done: Sequence[Node]) -> bool:
        """Whether copies just made break the site rule (a site was down: the write went
        to the sites that were up, and the repairer moves a copy when it is back)."""
        placer = await self._placer_now()
        return self.policy.sites.crowded([n.site for n in done], placer.sites)

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
        self.temperature.read(bid)
        cached = self.cache.get(bid)
        if cached is not None:
            return cached
        self.stats.gets += 1
        locations = await self._lookups.one(bid, None)
        data = await self._read(bid, locations)
        self.cache.put(bid, data)
        return data

    async def get_many(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Several blobs; one index lookup for those not cached, reads in parallel."""
        out: dict[str, bytes] = {}
        missing = []
        for bid in dict.fromkeys(ids):
            self.temperature.read(bid)
            cached = self.cache.get(bid)
            if cached is not None:
                out[bid] = cached
            else:
                missing.append(bid)
        if missing:
            self.stats.gets += len(missing)
            locations = await self._lookups.many(dict.fromkeys(missing))
            datas = await asyncio.gather(*(self._read(b, locations.get(b, ()))
                                           for b in missing))
            for bid, data in zip(missing, datas, strict=True):
                self.cache.put(bid, data)
                out[bid] = data
        return out

    async def iter_chunks(self, bid: str) -> AsyncIterator[bytes]:
        """The content of ``bid`` in pieces, without holding a chunked blob whole.

        Each piece is released once it verified against the blob's manifest, the last
        one only once the whole content verified against ``bid``
        (:meth:`director.blobreader.BlobReader.stream`).  When a replica fails before the
        first piece, the next one is tried; once pieces were released, a failure raises
        and the pieces so far must be discarded (the bad replica is queued for repair).

        :raises BlobNotFound, BlobUnavailable, BlobCorrupt: as :meth:`get`.
        """
        self.temperature.read(bid)
        cached = self.cache.get(bid)
        if cached is not None:
            yield cached
            return
        locations = await self._lookups.one(bid, None)
        replicas = await self._ordered(bid, locations)
        trouble: list[Node] = []

        async def attempt(node: Node) -> tuple[AsyncGenerator[bytes, None], bytes]:
            sources, hook = self._chunk_sources(node, replicas, trouble)
            pieces = self.reader.stream(bid, self.node_client(node), chunk_sources=sources,
                                        on_chunk_error=hook)
            try:
                return pieces, await anext(pieces)
            except BaseException:
                await pieces.aclose()
                raise

        found = await self._first_replica(f"blob {bid}", bid, replicas, attempt,
                                          miss_ok=False, repair=True)
        assert found is not None
        pieces, first = found
        try:
            yield first
            async for piece in pieces:
                yield piece
        except CodecError as exc:
            self.stats.bad_replicas += 1
            await self._queue_repair([bid])
            raise BlobCorrupt(f"blob {bid}: {exc}") from exc
        except (NodeError, OSError, NotHeld) as exc:
            await self._queue_repair([bid])
            raise BlobUnavailable(f"blob {bid}: {exc}") from exc
        finally:
            await pieces.aclose()
        if trouble:
            await self._queue_repair([bid])

    async def _ordered(self, bid: str, numbers: Sequence[int], *,
                       primary: bool = False) -> list[Node]:
        """The replicas of ``bid`` in the order reads try them (:func:`read_order`); with
        ``primary``, live ones by node number, so every directord picks the same first
        replica (the one item writes go to)."""
        if not numbers:
            raise BlobNotFound(f"blob {bid} is not in the index")
        snap = await self.snapshot()
        nodes, whole = self.order_replicas(snap, numbers, primary=primary)
        if not whole:
            # A node added since the snapshot: read the registry again once.
            snap = await self.snapshot(force=True)
            nodes, _whole = self.order_replicas(snap, numbers, primary=primary)
        return nodes

    def order_replicas(self, snap: RegistrySnapshot, numbers: Sequence[int], *,
                       primary: bool = False) -> tuple[list[Node], bool]:
        """The replicas of ``numbers`` in ``snap`` in the order reads try them (see
        :meth:`_ordered`), and whether ``snap`` knew every number (False: a node added
        since; the caller reads the registry again)."""
        nodes = [n for n in snap.resolve(numbers) if n.state is not NodeState.REMOVED]
        whole = len(nodes) >= len(numbers)
        if primary:
            # Live ones by node number: every directord picks the same first replica.
            return sorted(nodes, key=lambda n: (not n.readable, self._suspect(n),
                                                n.number)), whole
        suspect = [n.id for n in nodes if self._suspect(n)]
        return self.tiered(read_order(nodes, self._rng, suspect=suspect), suspect), whole

    def tiered(self, order: list[Node], suspect: Sequence[str]) -> list[Node]:
        """A read order with a storage hierarchy's fastest tier holding a copy first, and
        the copies in this process's ``site`` before the others (as is, without tiers
        or a site)."""
        tiers = self.policy.tiers
        # A storage hierarchy: the fastest tier holding a copy serves the read.
        if tiers is not None:
            order = tiers.fastest_first(order, suspect)
        # Copies in this frontend's own site before the others (the tier order kept
        # within each; every copy is verified all the same).
        return self.policy.sites.local_first(
            order, lambda n: n.readable and n.id not in suspect)

    def read_plan(self, snap: RegistrySnapshot, numbers: Sequence[int]
                  ) -> tuple[ReadOrder, list[str], bool]:
        """:meth:`order_replicas` for reads, before the random draw: a batch of reads of
        items on the same nodes computes it once, then per read
        ``self.tiered(plan.draw(self.rng), suspect)``.  Returns the plan, the suspect
        nodes' ids, and whether ``snap`` knew every number."""
        nodes = [n for n in snap.resolve(numbers) if n.state is not NodeState.REMOVED]
        suspect = [n.id for n in nodes if self._suspect(n)]
        return ReadOrder(nodes, suspect), suspect, len(nodes) >= len(numbers)

    @property
    def rng(self) -> random.Random:
        """What picks the replica a read tries first."""
        return self._rng

    async def _read(self, bid: str, numbers: Sequence[int]) -> bytes:
        replicas = await self._ordered(bid, numbers)
        blob = await self._read_verified(bid, replicas, content=True)
        assert blob is not None and blob.content is not None
        return blob.content

    async def _read_verified(self, bid: str, replicas: list[Node], *, content: bool,
                             cas: bool = False, what: str | None = None,
                             miss_ok: bool = False) -> VerifiedBlob | None:
        """Blob ``bid`` from the first replica whose copy verifies whole
        (:meth:`_first_replica`); a chunk that replica lacks or holds bad is taken from
        another, and the blob queued for repair.

        :param what: how errors name the blob (default ``blob <id>``).
        :returns: None when every replica lacks it and ``miss_ok``.
        """
        trouble: list[Node] = []

        async def attempt(node: Node) -> VerifiedBlob:
            sources, hook = self._chunk_sources(node, replicas, trouble)
            return await self.reader.read(bid, self.node_client(node), chunk_sources=sources,
                                          on_chunk_error=hook, content=content, cas=cas)

        found = await self._first_replica(what or f"blob {bid}", bid, replicas, attempt,
                                          miss_ok=miss_ok, repair=True)
        if trouble:
            await self._queue_repair([bid])
        return found

    def _chunk_sources(self, node: Node, replicas: Sequence[Node], trouble: list[Node]
                       ) -> tuple[list[NodeClient], ChunkErrorHook]:
        """Where the reader takes chunks from (``node``, then the other replicas), and
        its hook for a replica that failed to give one (noted in ``trouble``)."""
        order = [node, *(r for r in replicas if r is not node)]
        clients = [self.node_client(n) for n in order]
        by_client = {id(c): n for c, n in zip(clients, order, strict=True)}

        def failed(client: NodeClient, exc: Exception) -> None:
            bad = by_client[id(client)]
            trouble.append(bad)
            self._node_failed(bad, exc)

        return clients, failed

    async def _first_replica(self, what: str, index_id: str, replicas: list[Node],
                             attempt: Callable[[Node], Awaitable[T]], *, miss_ok: bool,
                             repair: bool) -> T | None:
        """The result of ``attempt`` on the first replica where it succeeds: failover.

        ``attempt`` raises :class:`CodecError` for bad bytes, :class:`NotHeld` when the
        replica lacks the key, :class:`NodeError` when it cannot answer.  Replicas that
        failed are queued for repair when ``repair``.  A copy sealed under a key this
        keyring lacks is skipped (another copy may be under a key it has, in the middle
        of a rotation) but never counted bad.

        :returns: None when every replica answered that it lacks the key and ``miss_ok``.
        :raises BlobCorrupt: every replica had bad bytes.
        :raises KeyUnavailable: no replica could serve it, some for want of a key.
        :raises BlobUnavailable: no replica could serve it.
        """
        errors: list[str] = []
        corrupt = misses = 0
        bad: list[Node] = []
        unkeyed: KeyUnavailable | None = None
        for i, node in enumerate(replicas):
            if i:
                self.stats.failovers += 1
            try:
                result = await attempt(node)
            except KeyUnavailable as exc:
                unkeyed = exc
                continue
            except CodecError as exc:
                corrupt += 1
                bad.append(node)
                self.stats.bad_replicas += 1
                errors.append(f"{node.id}: {exc}")
                log.error("%s on %s (%s) is corrupt: %s", what, node.id, node.address, exc)
                continue
            except NotHeld as exc:
                misses += 1
                bad.append(node)
                errors.append(f"{node.id}: {exc}")
                if not miss_ok:
                    self._node_failed(node, exc)
                continue
            except (NodeError, OSError, BlobUnavailable) as exc:
                self._node_failed(node, exc)
                bad.append(node)
                errors.append(f"{node.id}: {exc}")
                continue
            if bad and repair:
                await self._queue_repair([index_id])
            return result
        if bad and repair:
            await self._queue_repair([index_id])
        if unkeyed is not None:
            log.error("%s: %s", what, unkeyed)
            raise unkeyed
        if miss_ok and misses == len(errors):
            return None
        if corrupt and corrupt == len(errors):
            raise BlobCorrupt(f"{what}: every replica is corrupt ({'; '.join(errors)})")
        raise BlobUnavailable(f"{what}: no replica could serve it ({'; '.join(errors)})")

    # -- items (directord) --------------------------------------------------------------

    async def put_item(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0, *,
                       only_new: bool = False) -> bool:
        """Store ``value`` and ``flags`` under ``key``, as given, on ``replicas`` object
        servers placed by the key's index id, every copy with the same new cas unique;
        record the locations.

        A previous value of the key on nodes that did not take this write is deleted
        there and dropped from the index, so reads never find an older value.

        :param exptime: memcached expiry, passed to the object servers.
        :param only_new: memcached's ``add``: do nothing when the key holds a value (run
            on the item's primary replica, so two adds never both succeed).
        :returns: False when ``only_new`` found a value (``NOT_STORED``), else True.
        :raises BlobUnavailable: fewer than ``write_quorum`` object servers took it.
        """
        if only_new:
            add = ItemWrite(b"ms", p.MetaFlags(client_flags=flags, ttl=exptime, mode=b"E"),
                            value, creates=True, copy=Copy.VALUE)
            reply = await self.write_item(key, add)
            return reply is not None and reply.code == b"HD"
        index_id = item_index_id(key)
        lookups, adds, index = self._item_space(key)
        blob = is_blob_id(key)
        state = ItemState(value, flags, exptime, self.cas_clock.next())
        line = state.ms_line(key)

        async def write(node: Node) -> None:
            reply = await self.node_client(node).meta(line, value)
            if reply.code != b"HD":
                raise NodeError(f"{node.address}: ms {key!r} answered {reply.code.decode()}")

        what = _item_name(key)
        if not blob:
            await self._put_plain(key, index_id, what, write)
            return True
        # A blob id's entry only grows by merges (gc owns it), and a dedup hit trusts
        # that an entry means stored copies: look it up first, record after the writes.
        known = await lookups.one(index_id, None)
        done = await self._place_and_write(what, index_id, write)
        numbers = [n.number for n in done]
        await adds.one(index_id, frozenset(numbers))
        self.stats.item_puts += 1
        stale = [n for n in known if n not in numbers]
        if stale:
            await self._drop_copies(key, index, index_id, stale)
        self.temperature.wrote(index_id)
        if len(done) < self.policy.replicas or await self._crowded(done):
            await self._queue_repair([index_id])
        return True

    async def _put_plain(self, key: bytes, index_id: str, what: str,
                         write: Callable[[Node], Awaitable[None]]) -> None:
        """A plain item's set: its copies and its index entry written at once.

        The entry is replaced with the write's targets while they are written (one
        Redis script that answers the entry it replaced: ``objmail_index_replace``,
        acknowledged by a Redis replica), not after: the set then waits for the slower
        of the two, not for their sum.  Nothing is answered before both are done, so an
        acknowledged set is what it was (both copies durable, the entry naming exactly
        the nodes that took it).  A target that failed and was replaced by a fallback
        is corrected with a second replace before the answer.  Until the answer, a
        read may find the targets before their copies (an older value there, or a miss
        when the key moves to other nodes): a read concurrent with a set.
        """
        candidates = await self._write_candidates(index_id)
        targets = frozenset(n.number for n in candidates[:self.policy.replicas])
        record = self._item_sets.start(index_id, targets)
        try:
            done = await self._place_and_write(what, index_id, write, candidates)
        except BaseException:
            # The entry names targets that may lack the value: the set failed (as a set
            # memcached cannot store, it may leave the key missing or as it was).  The
            # record goes ahead; its outcome is nobody's now.
            if record.done():
                if not record.cancelled():
                    record.exception()  # retrieved: the write's error is the answer
            else:
                record.add_done_callback(_retrieved)
            raise
        known = set(await record)
        numbers = frozenset(n.number for n in done)
        if numbers != targets:
            known.update(await self._item_sets.one(index_id, numbers))
        self.stats.item_puts += 1
        stale = [n for n in known if n not in numbers]
        if stale:
            # No longer indexed, so never read; deleted so no older value lingers there.
            await self._delete_copies(key, stale)

    def _item_space(self, key: bytes) -> tuple[Coalescer[None], Coalescer[frozenset[int]],
                                               LocationIndex]:
        """Where an item key is indexed: a blob id with the blobs (gc owns it), any
        other key in the items' key space."""
        if is_blob_id(key):
            return self._lookups, self._adds, self.index
        return self._item_lookups, self._item_adds, self.items

    async def _delete_copies(self, key: bytes, numbers: Sequence[int]) -> None:
        """Best-effort delete of ``key``'s copies on ``numbers`` (no longer indexed)."""
        for node in (await self.snapshot()).resolve(numbers):
            try:
                await _delete(self.node_client(node), key)
            except (NodeError, OSError) as exc:
                # Never read (not in the index); inventory cleans it up.
                self._node_failed(node, exc)

    async def _drop_copies(self, key: bytes, index: LocationIndex, index_id: str,
                           numbers: Sequence[int]) -> None:
        """Forget (and best-effort delete) copies of ``key`` on ``numbers``."""
        for node in (await self.snapshot()).resolve(numbers):
            try:
                await _delete(self.node_client(node), key)
            except (NodeError, OSError) as exc:
                # Not in the index any more, so never read; inventory cleans it up.
                self._node_failed(node, exc)
        for number in numbers:
            await index.remove_location(index_id, number)

    async def get_item(self, key: bytes, *, cas: bool = False, read: bool = True
                       ) -> Value | None:
        """The item stored under ``key`` (with its cas unique when ``cas``), or None when
        no replica holds it."""
        return (await self.get_items([key], cas=cas, read=read)).get(key)

    async def get_items(self, keys: Sequence[bytes], *, cas: bool = False, read: bool = True
                        ) -> dict[bytes, Value]:
        """Several items: one index lookup, reads in parallel; misses (and items a
        ``flush_all`` hides) are left out.

        :param read: the values go out to a client: blob ids' reads count into the read
            temperature (not for a size or flags check, ``mg <id> s``).

        :raises BlobUnavailable: some key is indexed but no replica could answer for it.
        :raises BlobCorrupt: a blob id key whose every replica had bad bytes.
        """
        unique = list(dict.fromkeys(keys))
        if not any(is_blob_id(k) for k in unique):
            # Plain items: read with the other reads of this turn (director/itemreads.py).
            items = await self.item_reads.read(unique)
            if cas:
                return items
            return {k: Value(k, v.flags, v.value) for k, v in items.items()}
        ids = {key: item_index_id(key) for key in unique}
        blobs = [ids[k] for k in unique if is_blob_id(k)]
        plain = [ids[k] for k in unique if not is_blob_id(k)]
        locations = await self._lookups.many(dict.fromkeys(blobs)) if blobs else {}
        if plain:
            locations.update(await self._item_lookups.many(dict.fromkeys(plain)))
        self.stats.item_gets += len(unique)

        async def one(key: bytes) -> Value | None:
            numbers = locations.get(ids[key], ())
            if not numbers:
                return None
            return await self._read_item(key, ids[key], numbers, cas=cas, read=read)

        if len(unique) == 1:  # the common case: no task for a gather
            got = await one(unique[0])
            return {} if got is None else {unique[0]: got}
        found = await asyncio.gather(*(one(k) for k in unique))
        return {k: v for k, v in zip(unique, found, strict=True) if v is not None}

    async def _read_item(self, key: bytes, index_id: str, numbers: Sequence[int], *,
                         cas: bool = False, read: bool = True) -> Value | None:
        replicas = await self._ordered(index_id, numbers)
        what = _item_name(key)
        if is_blob_id(key):
            if read:
                self.temperature.read(index_id)
            # Served as stored (a chunked blob: its manifest), once verified whole.
            blob = await self._read_verified(index_id, replicas, content=False, cas=cas,
                                             what=what, miss_ok=True)
            if blob is None:
                return None
            return Value(key, blob.head.flags, blob.head.value, blob.cas)

        async def attempt(node: Node) -> Value:
            got = await self.node_client(node).get(key, cas=True)
            if got is None:
                raise NotHeld(f"{node.address}: does not have it")
            return got

        found = await self._first_replica(what, index_id, replicas, attempt, miss_ok=True,
                                          repair=False)
        if found is None or self._hidden(found.cas):
            return None
        return found if cas else Value(key, found.flags, found.value)

    async def delete_item(self, key: bytes) -> bool:
        """Delete ``key`` from every object server holding it and from the index.

        :returns: False when no replica held it (``NOT_FOUND``); True when one deleted
            it or could not be asked (the index no longer points there either way).
        """
        index_id = item_index_id(key)
        lookups, _adds, index = self._item_space(key)
        numbers = await lookups.one(index_id, None)
        if not numbers:
            return False
        if await self._flushed_away(key, index_id, numbers):
            return False
        outcomes = await self._on_each(key, numbers, lambda c: _delete(c, key))
        await index.delete(index_id)
        self.cache.memory.discard(index_id)
        return any(o is not False for o in outcomes)

    async def touch_item(self, key: bytes, exptime: int) -> bool:
        """Set a new expiry on every copy of ``key`` (the cas unique stays); True when one
        replica had it."""
        index_id = item_index_id(key)
        numbers = await self._item_space(key)[0].one(index_id, None)
        if not numbers or await self._flushed_away(key, index_id, numbers):
            return False
        outcomes = await self._on_each(key, numbers, lambda c: _touch(c, key, exptime))
        self.forget_location(index_id)
        return any(o is True for o in outcomes)

    async def _on_each(self, key: bytes, numbers: Sequence[int],
                       op: Callable[[NodeClient], Awaitable[bool]]) -> list[bool | None]:
        """``op`` on every replica in parallel; None for a replica that could not answer."""
        nodes = (await self.snapshot()).resolve(numbers)

        async def one(node: Node) -> bool | None:
            try:
                return await op(self.node_client(node))
            except (NodeError, OSError) as exc:
                self._node_failed(node, exc)
                return None

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    # -- item writes on the primary replica ------------------------------------------------

    async def write_item(self, key: bytes, write: ItemWrite) -> MetaReply | None:
        """Run ``write`` (a meta command) on the item's primary replica, which applies it
        atomically (a cas compare, an append, an incr), then bring the other replicas to
        the primary's new state (:class:`director.itemstate.Copy`).

        The primary is the first live replica by node number, the same for every
        directord; when it cannot answer, the next one is.  A replica that does not take
        the copy is dropped from the index (and its copy deleted, best effort), so no read
        finds an older value there.  A missing item is created (when the write may) on
        the key's placement candidates, the first as primary.

        :returns: the primary's reply, or None when the item does not exist and ``write``
            cannot create it.
        :raises NodeRefused: the primary refused it (``CLIENT_ERROR``...: the client's
            answer, e.g. incr of a non-number).
        :raises BlobUnavailable: no replica could take it.
        """
        index_id = item_index_id(key)
        lookups, adds, index = self._item_space(key)
        numbers = await lookups.one(index_id, None)
        if numbers:
            nodes = await self._ordered(index_id, numbers, primary=True)
            await self._flushed_away(key, index_id, numbers, nodes)
        elif write.creates:
            nodes = await self._create_order(index_id)
        else:
            return None
        cas = self.cas_clock.next() if write.new_cas else None
        primary, reply = await self._on_primary(key, nodes, write.request(key, cas))
        copy = copy_after(write, reply.code, reply.flags)
        if copy is Copy.NONE:
            return reply
        self.stats.item_puts += 1
        if numbers:
            others = [n for n in nodes if n is not primary]
            await self._copy_to(key, index, index_id, primary, others, copy,
                                self._written_state(write, cas), write.flags.ttl or 0)
            return reply
        # Created: copies on the next candidates, then the index names them all.
        made = [primary]
        if copy is not Copy.DROP:
            state = self._written_state(write, cas)
            if state is None:
                state = await self._primary_state(key, primary)
            if state is not None:
                made += await self._copies(key, state, nodes[nodes.index(primary) + 1:],
                                           self.policy.replicas - 1)
        await adds.one(index_id, frozenset(n.number for n in made))
        if copy is not Copy.DROP and len(made) < self.policy.write_quorum:
            raise BlobUnavailable(f"{_item_name(key)}: only {len(made)} of "
                                  f"{self.policy.write_quorum} required object servers "
                                  f"took the write")
        return reply

    async def _create_order(self, index_id: str) -> list[Node]:
        """Where a new item goes: its placement candidates, suspect ones last."""
        placer = await self._placer_now()
        candidates = sorted(placer.candidates(index_id), key=self._suspect)
        if len(candidates) < self.policy.write_quorum:
            raise BlobUnavailable(
                f"only {len(candidates)} active object server(s) in tier "
                f"{self.policy.tier!r}; write_quorum is {self.policy.write_quorum}")
        return candidates

    async def _on_primary(self, key: bytes, nodes: Sequence[Node], request: bytes
                          ) -> tuple[Node, MetaReply]:
        """The first of ``nodes`` that answers the meta ``request``, and its answer."""
        errors: list[str] = []
        for node in nodes:
            client = self.node_client(node)
            try:
                reply = await client.call([request], Expect.META)
                if not isinstance(reply, MetaReply):
                    raise NodeProtocolError(f"{client.address}: meta answered {reply!r}")
                return node, reply
            except NodeRefused:
                raise
            except (NodeError, OSError) as exc:
                self._node_failed(node, exc)
                errors.append(f"{node.id}: {exc}")
        raise BlobUnavailable(f"{_item_name(key)}: no replica could answer "
                              f"({'; '.join(errors) or 'none placed'})")

    async def meta_get_item(self, key: bytes, flags: p.MetaFlags) -> MetaReply | None:
        """A meta get that changes nothing (no T, N, R), answered by the item's primary
        replica as it would answer it (the next replica when it cannot), so win tokens,
        stale marks and TTLs read as one object server keeps them; None when the index
        does not know the key."""
        index_id = item_index_id(key)
        numbers = await self._item_space(key)[0].one(index_id, None)
        if not numbers:
            return None
        nodes = await self._ordered(index_id, numbers, primary=True)
        if await self._flushed_away(key, index_id, numbers, nodes):
            return None
        request = ItemWrite(b"mg", flags, new_cas=False).request(key, None)
        return (await self._on_primary(key, nodes, request))[1]

    async def debug_item(self, key: bytes, base64: bool) -> Reply | None:
        """``me <key>`` answered by the item's primary replica (``ME ...`` or ``EN``);
        None when the index does not know the key."""
        index_id = item_index_id(key)
        numbers = await self._item_space(key)[0].one(index_id, None)
        if not numbers:
            return None
        nodes = await self._ordered(index_id, numbers, primary=True)
        if await self._flushed_away(key, index_id, numbers, nodes):
            return None
        line = b"me %s%s\r\n" % (b64encode(key) if base64 else key, b" b" if base64 else b"")
        errors: list[str] = []
        for node in nodes:
            try:
                return await self.node_client(node).call([line], Expect.META)
            except NodeRefused:
                raise
            except (NodeError, OSError) as exc:
                self._node_failed(node, exc)
                errors.append(f"{node.id}: {exc}")
        raise BlobUnavailable(f"{_item_name(key)}: no replica could answer "
                              f"({'; '.join(errors)})")

    @staticmethod
    def _written_state(write: ItemWrite, cas: int | None) -> ItemState | None:
        """The item a write leaves when it carries all of it (a set, cas, add, replace);
        None when the primary computed it (append, incr) and it must be read back."""
        if write.copy is not Copy.VALUE or write.value is None or cas is None:
            return None
        f = write.flags
        return ItemState(write.value, f.client_flags or 0, f.ttl or 0, write.cas_of(cas))

    async def _primary_state(self, key: bytes, primary: Node) -> ItemState | None:
        """The primary's copy as it is now, or None when it holds none."""
        reply = await self.node_client(primary).meta(
            b"mg %s b v f t c u" % b64encode(key))
        if reply.code != b"VA" or reply.value is None:
            return None
        return ItemState(reply.value, int(reply.flag("f") or 0),
                         ttl_to_exptime(int(reply.flag("t") or -1)),
                         int(reply.flag("c") or 0))

    async def _primary_cas(self, key: bytes, primary: Node) -> int | None:
        """The cas unique of the primary's copy (None: it holds none), asked with ``me``,
        which changes nothing (an ``mg`` of a stale item would take its win token)."""
        reply = await self.node_client(primary).call([b"me %s b\r\n" % b64encode(key)],
                                                     Expect.META)
        if not isinstance(reply, MetaDebugReply):
            return None
        return int(dict(reply.fields).get(b"cas", b"0"))

    async def _copy_to(self, key: bytes, index: LocationIndex, index_id: str, primary: Node,
                       others: list[Node], copy: Copy, state: ItemState | None,
                       ttl: int) -> None:
        """Bring ``others`` to the primary's state after a write (see :meth:`write_item`).

        Copies of concurrent writes may land in any order, so whoever copies checks the
        primary afterwards and copies again until the primary still holds what it copied:
        the last copier leaves the replicas as the primary is.
        """
        if not others:
            return
        if copy is Copy.DELETE:
            await self._on_each(key, [n.number for n in others], lambda c: _delete(c, key))
            await index.delete(index_id)
            return
        if copy is Copy.DROP:
            await self._drop_copies(key, index, index_id, [n.number for n in others])
            return
        if copy is Copy.TOUCH:
            got = await self._on_each(key, [n.number for n in others],
                                      lambda c: _touch(c, key, ttl))
            failed = [n.number for n, ok in zip(others, got, strict=True) if ok is not True]
            if failed:
                await self._drop_copies(key, index, index_id, failed)
            return
        for _ in range(COPY_ROUNDS):
            if state is None:
                state = await self._primary_state(key, primary)
            if state is None:  # gone meanwhile (deleted, expired): so are the copies
                await self._on_each(key, [n.number for n in others],
                                    lambda c: _delete(c, key))
                return
            took = await self._copies(key, state, others, len(others))
            failed = [n.number for n in others if n not in took]
            if failed:
                await self._drop_copies(key, index, index_id, failed)
                others = took
            if not others or await self._primary_cas(key, primary) == state.cas:
                return
            state = None  # changed meanwhile: copy what it is now
        log.warning("%s kept changing while its copies were written; they may lag until "
                    "its next write", _item_name(key))

    async def _copies(self, key: bytes, state: ItemState, nodes: Sequence[Node],
                      want: int) -> list[Node]:
        """Write ``state`` on up to ``want`` of ``nodes``, in parallel, the next node
        standing in for one that fails; the nodes that took it."""
        queue = list(nodes)
        done: list[Node] = []
        line = state.ms_line(key)

        async def slot() -> None:
            while queue:
                node = queue.pop(0)
                try:
                    reply = await self.node_client(node).meta(line, state.value)
                    if reply.code != b"HD":
                        raise NodeError(f"{node.address}: copy answered {reply.code!r}")
                except (NodeError, OSError) as exc:
                    self._node_failed(node, exc)
                    continue
                done.append(node)
                return

        await asyncio.gather(*(slot() for _ in range(min(want, len(queue)))))
        return done

    # -- flush_all --------------------------------------------------------------------------

    async def flush_items(self, delay: int = 0) -> None:
        """memcached's ``flush_all [delay]`` for the items: every item written before the
        cut-off (now, or ``delay`` as memcached reads it) reads as missing once it has
        come, through every directord (they read the cut-off with the registry)."""
        cutoff = flush_cutoff(delay, self._wall())
        await self.items.set_flush_cutoff(cutoff)
        self._flush_cutoff = cutoff
        if self._flush_board is not None:
            self._board_seen = self._flush_board.post(cutoff)

    def _board_generation(self) -> int:
        return self._flush_board.generation() if self._flush_board is not None else 0

    def _current_cutoff(self) -> float:
        """The cut-off in force here: the last one read from Redis, or one another worker
        of this directord posted since (director/flushboard.py)."""
        board = self._flush_board
        if board is not None:
            generation = board.generation()
            if generation != self._board_seen:
                self._flush_cutoff = board.cutoff()
                self._board_seen = generation
        return self._flush_cutoff

    def hidden(self, cas: int | None) -> bool:
        """True when a ``flush_all`` cut off the item write that carried ``cas``."""
        return is_flushed(cas, self._current_cutoff(), self._wall())

    _hidden = hidden

    async def _flushed_away(self, key: bytes, index_id: str, numbers: Sequence[int],
                            nodes: Sequence[Node] | None = None) -> bool:
        """True when a ``flush_all`` hides the item; its copies are then deleted (only
        those of the flushed value: ``md C<cas>``), so a write finds it missing."""
        if not self._current_cutoff() or is_blob_id(key):
            return False
        if nodes is None:
            nodes = await self._ordered(index_id, numbers, primary=True)
        try:
            cas = await self._primary_cas(key, nodes[0])
        except (NodeError, OSError) as exc:
            self._node_failed(nodes[0], exc)
            return False
        if not self._hidden(cas):
            return False
        line = b"md %s b C%d" % (b64encode(key), cas or 0)

        async def drop(client: NodeClient) -> bool:
            return (await client.meta(line)).code == b"HD"

        await self._on_each(key, [n.number for n in nodes], drop)
        return True

    # -- gc fence (metadata/delivery.py; director/gcwatch.py) -----------------------------

    async def gc_generation(self) -> int:
        """gc's generation: read it before uploading blobs that a commit will reference."""
        return await self.gc_watch.generation()

    async def check_kept(self, ids: Iterable[str], generation: int) -> None:
        """The last step of a commit that references ``ids``: from now on gc keeps them.

        :param generation: :meth:`gc_generation` as read before their upload.
        :raises BlobUnavailable: gc collected some of them since (the commit must roll
            back; storing the message again uploads them again).
        """
        gone = await self.gc_watch.collected_since(ids, generation)
        if gone:
            raise BlobUnavailable(f"gc collected {len(gone)} blob(s) of this delivery while "
                                  f"it waited to commit (e.g. {gone[0]}); try again")

    # -- exists / delete ----------------------------------------------------------------

    async def exists(self, bid: str) -> bool:
        """True when the index knows ``bid`` (it was stored and not collected)."""
        return bool(await self._lookups.one(bid, None))

    async def delete(self, bid: str) -> bool:
        """Remove ``bid`` from every object server holding it and from the index.

        Meant for gc, which has checked that nothing references it.  Copies on
        unreachable nodes are found later by inventory reconciliation.
        """
        numbers = await self._lookups.one(bid, None)
        if not numbers:
            return False
        snap = await self.snapshot()
        nodes = snap.resolve(numbers)

        async def drop(node: Node) -> None:
            client = self.node_client(node)
            try:
                await delete_copy(client, await self.reader.stored_keys(bid, client))
            except (NodeError, OSError) as exc:
                self._node_failed(node, exc)

        await asyncio.gather(*(drop(n) for n in nodes))
        self.cache.memory.discard(bid)
        if self.cache.disk is not None:
            self.cache.disk.discard(bid)
        return await self.index.delete(bid)


def open_keys(dconf: DirectorConfig) -> tuple[Keyring | None, bytes | None]:
    """The keyring and the legacy key the config names.

    :raises KeyringError: no keyring and ``allow_plaintext`` is off; a keyring or legacy
        key file that is missing, unsafe or malformed.
    """
    keyring = load_keyring(dconf.keyring_file) if dconf.keyring_file else None
    if keyring is None and not dconf.allow_plaintext:
        raise KeyringError(
            "no keyring is configured, so blobs would be stored in plaintext under "
            "guessable ids; create one with `objmail keys new --out FILE` and set "
            "director.keyring_file = FILE (or set director.allow_plaintext = true to run "
            "without encryption on purpose)")
    legacy = None
    if dconf.encryption_key_file:
        try:
            legacy = load_key(dconf.encryption_key_file)
        except (OSError, BadKeyFile) as exc:
            raise ConfigError("director.encryption_key_file", str(exc)) from None
    return keyring, legacy


def installation_fingerprints(keyring: Keyring | None, legacy: bytes | None
                              ) -> dict[str, str]:
    """What :class:`KeyRegistry` records and compares for these keys."""
    out = keyring.fingerprints() if keyring is not None else {}
    if legacy is not None:
        out[f"key:{LEGACY_KEY_ID}"] = fingerprint(legacy)
    return out


def _item_name(key: bytes) -> str:
    """How errors and logs name an item (its key, printable)."""
    return f"item {key.decode('ascii', 'backslashreplace')}"


async def _delete(client: NodeClient, key: bytes) -> bool:
    """Delete an item's copy (any key: meta commands carry it in base64)."""
    return (await client.meta(b"md %s b" % b64encode(key))).code == b"HD"


async def _touch(client: NodeClient, key: bytes, exptime: int) -> bool:
    """A new exptime for an item's copy, its cas unchanged; True when it was there."""
    if is_text_key(key):
        return await client.touch(key, exptime)
    reply = await client.meta(b"mg %s b T%d u" % (b64encode(key), exptime))
    return reply.code == b"HD"
