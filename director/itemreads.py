"""Plain items read in batches: every read asked for in one turn of the loop is served by
one index lookup and one multi-key ``gets`` per object server.

Theory of operation.  directord answers a ``get`` of a plain key (not a blob id) with an
index lookup and a read from one of the item's replicas.  Done one request at a time
that is a coroutine, a task, a future for the lookup, a future and a timer for the read,
and one ``gets`` line per key: under load most of directord's CPU went to that plumbing,
not to the work.  :class:`ItemReads` collects the reads submitted during one turn of the
loop (from every client connection, and every command of a pipeline) and serves them
together:

1. one lookup of every key's locations (:class:`director.client.Coalescer`, so it also
   shares its Redis batch with concurrent lookups of other operations);
2. each key's replicas in the order a single read would try them
   (:func:`director.placement.read_order`: live ones weighted by inverse load, suspect
   ones after, the rest last);
3. rounds: the keys are grouped by the next replica each has to try, and each group is
   one ``gets k1 k2 ...`` to that object server (at most :data:`MAX_KEYS` keys a line),
   all groups in parallel.  A key the replica holds is found (and hidden when a
   ``flush_all`` cut it off, as a single read does); a key it lacks, or a replica that
   failed (unreachable, timed out, answered garbage: it is made suspect, as for a single
   read), sends the key on to its next replica in the next round.

With directord's location cache (:mod:`director.locationcache`, kept exact by Redis's
invalidations: :mod:`director.tracking`), step 1 asks the cache first and Redis only for
the keys it lacks; a key whose cached location no replica could serve (every replica
lacked it or failed) is looked up in Redis again, its entry dropped, and read once more
from what Redis says, so a cached location can cost a read, never an answer.

A key every replica lacks is a miss; a key no replica could answer for (some failed,
none had it) fails the reads that asked for it with
:class:`~director.errors.BlobUnavailable`, exactly as :meth:`BlobClient.get_items` does
for one read.  What a batch changes is only how requests travel: the same index entry,
the same replica order, the same failover, the same answers.  A read whose caller went
away (a closed connection) is still read and then dropped; its cost is bounded by the
adapter's per-connection limits, which count it until it completes.

Blob-id keys never come here: their reads are verified whole against the id
(:mod:`director.blobreader`) on the single-read path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final

from director.errors import BlobUnavailable
from director.keys import item_index_id
from director.memcache_client import NodeError, NodeRefused
from director.nodes import Node
from director.placement import ReadOrder
from objstore.replies import Value

if TYPE_CHECKING:
    from director.client import BlobClient

log = logging.getLogger(__name__)

#: Keys per ``gets`` line sent to an object server (250-byte keys: 8 KiB a line at most).
MAX_KEYS: Final = 32

#: What a read's callback gets: the items found (with their cas uniques), or the error.
ReadDone = Callable[[dict[bytes, Value] | BaseException], None]


class _Read:
    """One submitted read: its keys and who to tell."""

    __slots__ = ("done", "keys")

    def __init__(self, keys: Sequence[bytes], done: ReadDone) -> None:
        self.keys = keys
        self.done = done


class _Key:
    """One key of a batch: the replicas still to try, and what the tried ones said."""

    __slots__ = ("cached", "failed", "found", "index_id", "replicas", "settled", "tried")

    def __init__(self, index_id: str) -> None:
        self.index_id = index_id
        #: Its locations came from the location cache (a miss is checked with Redis).
        self.cached = False
        self.replicas: list[Node] = []
        self.tried = 0
        #: Replicas that could not answer (as opposed to answering that they lack it).
        self.failed: list[str] = []
        self.found: Value | None = None
        #: A replica answered with the item: nothing more to ask.
        self.settled = False


def _tell(read: _Read, result: dict[bytes, Value] | BaseException) -> None:
    """Call a read's callback; a callback that raises (a bug) must not keep the other
    reads of its batch from their answers."""
    try:
        read.done(result)
    except Exception:
        log.exception("a read's callback failed")


class ItemReads:
    """Batches plain-item reads for one :class:`~director.client.BlobClient`."""

    def __init__(self, client: BlobClient) -> None:
        self._client = client
        self._pending: list[_Read] = []
        #: Batches being served (held so their tasks are not collected mid-flight).
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0
        #: Wraps the delivery of a batch's results: directord's protocol adapter holds
        #: the replies they complete and writes each connection's together
        #: (:meth:`objstore.server.ObjstoreFactory.replies_together`).
        self.delivery: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext

    def submit(self, keys: Sequence[bytes], done: ReadDone) -> None:
        """Read the plain ``keys``; ``done`` is called once, with the items found (misses
        left out; values carry their cas unique) or with the exception that failed the
        read.  It runs on the loop, after this call returned."""
        if not self._pending:
            task = asyncio.get_running_loop().create_task(self._serve())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._pending.append(_Read(keys, done))

    async def read(self, keys: Sequence[bytes]) -> dict[bytes, Value]:
        """:meth:`submit` for coroutines."""
        fut: asyncio.Future[dict[bytes, Value]] = asyncio.get_running_loop().create_future()

        def done(result: dict[bytes, Value] | BaseException) -> None:
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.submit(keys, done)
        return await fut

    async def close(self) -> None:
        """Wait for the batches in flight (the client is closing)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- one batch ---------------------------------------------------------------------

    async def _serve(self) -> None:
        # Runs one loop turn after the first submit: everything submitted meanwhile.
        batch, self._pending = self._pending, []
        self.batches += 1
        keys: dict[bytes, _Key] = {}
        for read in batch:
            for key in read.keys:
                if key not in keys:
                    keys[key] = _Key(item_index_id(key))
        try:
            await self._locate(keys)
            await self._rounds(keys)
            again = {key: k for key, k in keys.items() if k.cached and not k.settled}
            if again:
                await self._recheck(again)
        except Exception as exc:  # the batch failed as a whole (index unreachable...)
            with self.delivery():
                for read in batch:
                    _tell(read, exc)
            return
        except BaseException as exc:  # cancelled: the loop is closing
            for read in batch:
                _tell(read, exc)
            raise
        with self.delivery():
            self._deliver(batch, keys)

    @staticmethod
    def _deliver(batch: list[_Read], keys: dict[bytes, _Key]) -> None:
        for read in batch:
            found: dict[bytes, Value] = {}
            error: BaseException | None = None
            for key in read.keys:
                k = keys[key]
                if k.found is not None:
                    found[key] = k.found
                elif k.failed and not k.settled:
                    error = BlobUnavailable(
                        f"item {key.decode('ascii', 'backslashreplace')}: no replica could "
                        f"serve it ({'; '.join(k.failed)})")
                    break
            _tell(read, found if error is None else error)

    async def _recheck(self, keys: dict[bytes, _Key]) -> None:
        """Keys whose cached location served nothing: ask Redis, read again."""
        tracker = self._client.tracker
        assert tracker is not None
        cache = tracker.cache
        for k in keys.values():
            cache.drop(k.index_id)
            cache.stats.fallbacks += 1
            k.cached = False
            k.replicas = []
            k.tried = 0
            k.failed = []
        await self._locate(keys, use_cache=False)
        await self._rounds(keys)

    async def _locate(self, keys: dict[bytes, _Key], *, use_cache: bool = True) -> None:
        """Each key's replicas, in the order a single read would try them."""
        client = self._client
        if use_cache:
            client.stats.item_gets += len(keys)
        locations: dict[str, tuple[int, ...]] = {}
        ids: dict[str, None] = {}
        tracker = client.tracker
        if tracker is None:
            ids = {k.index_id: None for k in keys.values()}
        else:
            cache = tracker.cache
            # Every invalidation Redis sent before this instant is applied first.
            if use_cache and tracker.fresh():
                for k in keys.values():
                    numbers = cache.get(k.index_id)
                    if numbers is None:
                        ids[k.index_id] = None
                    else:
                        locations[k.index_id] = numbers
                        k.cached = True
            else:
                ids = {k.index_id: None for k in keys.values()}
        if ids:
            if tracker is None:
                locations = await client.item_lookups.many(ids)
            else:
                bucket_of = client.items.bucket_key
                buckets = {i: bucket_of(i) for i in ids}
                # Taken before the lookup leaves: an invalidation meanwhile voids it.
                ticket = tracker.cache.begin(buckets.values())
                read: dict[str, tuple[int, ...]] = {}
                try:
                    read = await client.item_lookups.many(ids)
                finally:
                    tracker.cache.finish(ticket, {i: (n, buckets[i]) for i, n in read.items()})
                locations.update(read)
        snap = await client.snapshot()
        for again in (False, True):
            if again:
                snap = await client.snapshot(force=True)
            complete = True
            plans: dict[tuple[int, ...], tuple[ReadOrder, list[str]]] = {}
            rng = client.rng
            for k in keys.values():
                numbers = locations.get(k.index_id, ())
                if not numbers:
                    continue
                known = plans.get(numbers)
                if known is None:
                    plan, suspect, whole = client.read_plan(snap, numbers)
                    known = plans[numbers] = (plan, suspect)
                    complete = complete and whole
                k.replicas = client.tiered(known[0].draw(rng), known[1])
            if complete:
                return
            # A node added since the snapshot: read the registry again, once.

    async def _rounds(self, keys: dict[bytes, _Key]) -> None:
        """Ask each key's next replica, all replicas at once, until every key is found,
        a miss everywhere, or out of replicas."""
        client = self._client
        while True:
            by_node: dict[int, tuple[Node, list[bytes]]] = {}
            for key, k in keys.items():
                if not k.settled and k.tried < len(k.replicas):
                    node = k.replicas[k.tried]
                    if k.tried:
                        client.stats.failovers += 1
                    k.tried += 1
                    by_node.setdefault(node.number, (node, []))[1].append(key)
            if not by_node:
                return
            await asyncio.gather(*(self._ask(node, names, keys)
                                   for node, names in by_node.values()))

    async def _ask(self, node: Node, names: list[bytes], keys: dict[bytes, _Key]) -> None:
        """One round's keys on one replica: found ones are done, the rest go on."""
        client = self._client
        conn = client.node_client(node)
        for start in range(0, len(names), MAX_KEYS):
            part = names[start:start + MAX_KEYS]
            try:
                got = await conn.get_many(part, cas=True)
            except NodeRefused as exc:
                if len(part) == 1:
                    self._failed(node, part, keys, exc)
                    continue
                # One key the server refuses must not fail the others: one by one.
                got = {}
                for key in part:
                    try:
                        item = await conn.get(key, cas=True)
                    except (NodeError, OSError) as one_exc:
                        self._failed(node, [key], keys, one_exc)
                        continue
                    if item is not None:
                        got[key] = item
            except (NodeError, OSError) as exc:
                self._failed(node, part, keys, exc)
                continue
            for key in part:
                item = got.get(key)
                if item is not None:
                    k = keys[key]
                    k.settled = True
                    # An item a flush_all cut off reads as missing, as on a single read.
                    k.found = None if client.hidden(item.cas) else item
                # else: this replica lacks it; the next round asks the next one.

    def _failed(self, node: Node, part: list[bytes], keys: dict[bytes, _Key],
                exc: BaseException) -> None:
        """``node`` could not answer for ``part``: made suspect, the keys go on."""
        self._client.node_failed(node, exc)
        for key in part:
            keys[key].failed.append(f"{node.id}: {exc}")
