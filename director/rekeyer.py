"""Key rotation: seal every stored copy under the keyring's current key, and count which
keys the copies are under.

Theory of operation.  A blob's id is computed from its plain content with the id key,
which never changes, so re-encrypting a blob changes its stored bytes and nothing else:
no id, no index entry, no message.  A rekey run (job ``rekey``, under its lease) goes
once round the index, a page of buckets at a time from a cursor saved in its job hash,
like a scrub (:mod:`director.scrubber`), and for every copy of every entry:

1. learns which keys its items are sealed under from their flags (``mg <key> f``, no
   value read; a chunked blob's manifest is read to list its chunks):
   :func:`copy_key_ids`.  A copy already wholly under the target key (the current key
   when the run began) is counted and left alone;
2. otherwise reads the copy and verifies it whole against its id
   (:meth:`director.blobreader.BlobReader.read`): a copy that does not verify is not
   rewritten but counted and queued for repair, as a scrub would; a missing one too;
3. rewrites it in place: each item is decrypted and sealed again under the target key,
   its compression kept (:meth:`director.codec.BlobCodec.reseal`); the chunks first with
   ``ms <key> ... MR`` (replace: only if the key still exists, so a chunk gc deleted
   meanwhile is not brought back), then the head with ``ms <id> ... C<cas>`` (only if
   the head is still the one verified).  A reader meanwhile finds each item whole under
   the old key or the new, and decodes either: the manifest's content is the same.  A
   copy that changed under the run (gc, repair, a put) is counted ``raced`` and left to
   the next run.

Values stored in plaintext (before the installation had a keyring) and in the legacy
envelope (key id 0, ``director.encryption_key_file``) are rewritten the same way, so
one run also encrypts what was stored before encryption was on.  A value under a key
this keyring lacks stops the run with :class:`~director.errors.KeyUnavailable`
(configuration, exit 78).

A run is resumable: the cursor, the target key and the counters live in the job hash,
so Ctrl-C, a crash or a lost lease cost at most the page in hand.  A run resumed with
another current key starts again from the first bucket with the new target.  ``rate``
caps the stored bytes read and written per second.

:func:`census` is the read-only half, for ``objmail keys status``: how many copies are
under each key id, or in plaintext, from a scan of the index (no lease, nothing written).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.background import BackgroundJob, PassControl, PassStats, throttle
from director.blobreader import NotHeld, VerifiedBlob
from director.codec import FLAG_MANIFEST, CodecError, Manifest, chunk_key, key_id_of
from director.errors import KeyUnavailable
from director.jobstate import JobState, integer, number
from director.keyring import KeyringError
from director.memcache_client import NodeClient, NodeError

if TYPE_CHECKING:
    from director.blobreader import BlobReader
    from director.client import BlobClient
    from director.registry import RegistrySnapshot

log = logging.getLogger(__name__)

#: Index buckets per step (the cursor is saved after each).
PAGE_BUCKETS = 64
#: Copies examined or rewritten at the same time.
PARALLELISM = 8
#: Blob ids kept as examples of copies left behind.
EXAMPLES = 10
#: Counters kept in the job hash while a run is in progress.
COUNTERS = ("items", "copies", "current", "rewritten", "bytes", "corrupt", "missing",
            "unreachable", "raced", "queued")
#: The job-hash fields of a run in progress (forgotten when it ends); ``found:<label>``
#: fields count copies by the key they were under when the run saw them.
RUN_FIELDS = ("started_at", "cursor", "target", *COUNTERS)
#: How plaintext is named where key ids are listed.
PLAINTEXT = "plaintext"


def key_label(key_id: int | None) -> str:
    """A key id as counters and operators name it (None: :data:`PLAINTEXT`)."""
    return PLAINTEXT if key_id is None else str(key_id)


async def copy_key_ids(reader: BlobReader, bid: str, client: NodeClient
                       ) -> frozenset[int | None] | None:
    """The key ids the items of ``client``'s copy of ``bid`` are sealed under (None in the
    set: stored in plaintext), from their flags; None when it holds no copy.

    A chunked copy's manifest is read to list its chunks; when it is sealed under a key
    this keyring lacks, the head's key id alone is returned.

    :raises CodecError: a manifest that does not decode.
    :raises NodeError: the node could not be asked.
    """
    head = bid.encode()
    reply = await client.meta(b"mg " + head + b" f")
    if reply.code not in (b"HD", b"VA"):
        return None
    flags = int(reply.flag("f") or b"0")
    found: set[int | None] = {key_id_of(flags)}
    if not flags & FLAG_MANIFEST:
        return frozenset(found)
    got = await client.get(head)
    if got is None:
        return None
    try:
        manifest = Manifest.from_bytes(await reader.decode(got.value, got.flags, bid))
    except KeyUnavailable:
        return frozenset(found)
    for n in range(len(manifest.chunk_ids)):
        chunk = await client.meta(b"mg " + chunk_key(bid, n).encode() + b" f")
        if chunk.code in (b"HD", b"VA"):
            found.add(key_id_of(int(chunk.flag("f") or b"0")))
    return frozenset(found)


@dataclass
class RekeyStats(PassStats):
    """What a rekey run did so far (the whole run, resumed invocations included).

    :param target: the key id copies are sealed under.
    :param copies: copies examined.
    :param current: copies found under the target key already.
    :param rewritten: copies sealed again under the target key.
    :param corrupt: copies that did not verify (queued for repair, not rewritten).
    :param missing: copies the object server did not hold (queued for repair).
    :param unreachable: copies on a node that could not be asked, or is not up.
    :param raced: copies that changed while being rewritten (left for the next run).
    :param queued: blobs queued for repair.
    :param found: copies by the key they were under when examined (``plaintext``, ``0``
        for the legacy key, ``1``...).
    :param finished: the run went round the whole index and ended.
    """

    job: str = "rekey"
    target: int = 0
    buckets_done: int = 0
    buckets: int = 0
    copies: int = 0
    current: int = 0
    rewritten: int = 0
    corrupt: int = 0
    missing: int = 0
    unreachable: int = 0
    raced: int = 0
    queued: int = 0
    finished: bool = False
    found: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def left(self) -> int:
        """Copies the run could not bring under the target key."""
        return self.corrupt + self.missing + self.unreachable + self.raced


class Rekeyer(BackgroundJob[RekeyStats]):
    """One rekey run (see the module docstring).

    :param rate: at most this many stored bytes read and written per second.
    :param sleep: how the rate limit waits (tests pass a faster one).
    """

    job = "rekey"

    def __init__(self, client: BlobClient, *, rate: float | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], float] = time.time, token: str | None = None) -> None:
        super().__init__(client, clock=clock, now=now, token=token)
        if rate is not None and rate <= 0:
            raise ValueError(f"rekey rate must be positive, got {rate}")
        self.rate = rate
        self._sleep = sleep

    @property
    def target(self) -> int:
        """The key id this process seals with.

        :raises KeyringError: no keyring is configured (nothing to seal with).
        """
        keyring = self.client.codec.keyring
        if keyring is None:
            raise KeyringError("no keyring is configured: there is no key to seal with")
        return keyring.current

    async def run_pass(self, control: PassControl) -> RekeyStats:
        target = self.target
        state = control.state(self)
        fields = await state.load()
        stats = RekeyStats(target=target, buckets=self.index.layout.buckets)
        if "started_at" in fields and integer(fields, "target") != target:
            log.warning("rekey: the run in progress sealed under key %s, the current key "
                        "is now %d: starting again from the first bucket",
                        fields.get("target"), target)
            await state.forget(*fields)
            fields = {}
        if "started_at" not in fields:
            fields = {"started_at": repr(self.now()), "cursor": "0", "target": str(target)}
            await state.save(fields)
        for name in COUNTERS:
            setattr(stats, name, integer(fields, name))
        stats.found = {k[6:]: integer(fields, k) for k in fields if k.startswith("found:")}
        cursor: int | None = integer(fields, "cursor")
        stats.buckets_done = cursor or 0
        started, moved = self.clock(), 0
        while cursor is not None and cursor < stats.buckets:
            page = await self.index.scan(cursor, buckets=PAGE_BUCKETS)
            moved += await self._page(dict(page.entries), target, stats)
            cursor = page.next_cursor
            stats.buckets_done = page.buckets_done
            await state.save({"cursor": stats.buckets if cursor is None else cursor,
                              **{name: getattr(stats, name) for name in COUNTERS},
                              **{f"found:{k}": v for k, v in stats.found.items()}})
            if cursor is None:
                break
            if not await control.checkpoint(stats):
                return stats
            if not await throttle(control, stats, rate=self.rate, done=moved,
                                  elapsed=lambda: self.clock() - started, sleep=self._sleep):
                return stats
        await state.save({"last_finished": self.now(), "last_target": target,
                          "last_rewritten": stats.rewritten, "last_left": stats.left})
        await state.forget(*RUN_FIELDS, *(f"found:{k}" for k in stats.found))
        stats.finished = True
        await control.checkpoint(stats)
        stats.interrupted = False  # the run is over; nothing was cut short
        return stats

    async def _page(self, entries: Mapping[str, tuple[int, ...]], target: int,
                    stats: RekeyStats) -> int:
        """Bring one page's copies under ``target``; returns the stored bytes moved."""
        stats.items += len(entries)
        if not entries:
            return 0
        snap = await self.client.snapshot()
        sem = asyncio.Semaphore(PARALLELISM)
        moved = 0
        found: Counter[str] = Counter()

        async def one(bid: str, numbers: tuple[int, ...]) -> bool:
            """Every copy of ``bid``; True when one is bad (to queue for repair)."""
            nonlocal moved
            bad = False
            for num in numbers:
                node = snap.by_number(num)
                stats.copies += 1
                if node is None or not node.readable:
                    stats.unreachable += 1
                    continue
                async with sem:
                    outcome, size = await self._copy(bid, self.client.node_client(node),
                                                     target, found)
                moved += size
                setattr(stats, outcome, getattr(stats, outcome) + 1)
                bad = bad or outcome in ("corrupt", "missing")
                if outcome in ("unreachable", "raced") and len(stats.examples) < EXAMPLES:
                    stats.examples.append(bid)
            return bad

        verdicts = await asyncio.gather(*(one(b, n) for b, n in entries.items()))
        for label, count in found.items():
            stats.found[label] = stats.found.get(label, 0) + count
        bad_ids = [b for b, bad in zip(entries, verdicts, strict=True) if bad]
        if bad_ids:
            await self.client.repair.add(bad_ids)
            stats.queued += len(bad_ids)
        stats.bytes += moved
        return moved

    async def _copy(self, bid: str, client: NodeClient, target: int,
                    found: Counter[str]) -> tuple[str, int]:
        """Examine one copy and rewrite it if needed: the counter it falls under and the
        stored bytes moved."""
        reader = self.client.reader
        try:
            keys = await copy_key_ids(reader, bid, client)
            if keys is None:
                return "missing", 0
            found.update(key_label(k) for k in keys)
            if keys == {target}:
                return "current", 0
            blob = await reader.read(bid, client, content=False, cas=True)
            if not await self._rewrite(client, blob):
                return "raced", blob.stored_bytes
        except NotHeld:
            return "missing", 0
        except CodecError as exc:
            log.error("rekey: copy of %s on %s does not verify (%s); queued for repair",
                      bid, client.address, exc)
            return "corrupt", 0
        except (NodeError, OSError):
            return "unreachable", 0
        return "rewritten", 2 * blob.stored_bytes

    async def _rewrite(self, client: NodeClient, blob: VerifiedBlob) -> bool:
        """Seal ``blob``'s items again under the current key, in place: chunks only if
        they still exist, the head only if unchanged since it was read.  False when the
        copy changed meanwhile."""
        codec = self.client.codec
        *chunks, head = blob.items
        for item in chunks:
            value, flags = codec.reseal(item.value, item.flags, item.key.decode())
            reply = await client.meta(b"ms %s %d F%d MR" % (item.key, len(value), flags),
                                      value)
            if reply.code != b"HD":
                return False
        value, flags = codec.reseal(head.value, head.flags, head.key.decode())
        reply = await client.meta(b"ms %s %d F%d C%d" % (head.key, len(value), flags,
                                                         blob.cas or 0), value)
        return reply.code == b"HD"

    async def status(self) -> dict[str, Any]:
        """The job hash as an operator wants it (``objmail keys rotate --status``)."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        return {"running": "started_at" in fields,
                **{k: number(fields, k) if k != "cursor" else integer(fields, k)
                   for k in fields}}


@dataclass
class Census:
    """Copies by the key they are sealed under, from a scan of the whole index.

    :param by_key: copies per key label (``plaintext``, ``0``, ``1``...); a copy whose
        items are under several keys (a rewrite interrupted midway) counts for each.
    :param missing: copies the index lists but the object server does not hold.
    :param unreachable: copies on nodes that could not be asked.
    :param unreadable: copies whose manifest does not decode.
    """

    blobs: int = 0
    copies: int = 0
    by_key: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    unreachable: int = 0
    unreadable: int = 0


async def census(client: BlobClient, *,
                 progress: Callable[[Census, int, int], None] | None = None) -> Census:
    """Scan every copy's key ids (flags only; see :func:`copy_key_ids`).

    :param progress: called after each page with the counts and buckets done / total.
    """
    out = Census()
    by_key: Counter[str] = Counter()
    sem = asyncio.Semaphore(PARALLELISM)
    buckets = client.index.layout.buckets
    cursor: int | None = 0

    async def one(snap: RegistrySnapshot, bid: str, num: int) -> None:
        node = snap.by_number(num)
        if node is None or not node.readable:
            out.unreachable += 1
            return
        try:
            async with sem:
                keys = await copy_key_ids(client.reader, bid, client.node_client(node))
        except CodecError:
            out.unreadable += 1
            return
        except (NodeError, OSError):
            out.unreachable += 1
            return
        if keys is None:
            out.missing += 1
        else:
            by_key.update(key_label(k) for k in keys)

    while cursor is not None and cursor < buckets:
        page = await client.index.scan(cursor, buckets=PAGE_BUCKETS)
        snap = await client.snapshot()
        out.blobs += len(page.entries)
        out.copies += sum(len(nums) for _b, nums in page.entries)
        await asyncio.gather(*(one(snap, b, n) for b, nums in page.entries for n in nums))
        cursor = page.next_cursor
        out.by_key = dict(by_key)
        if progress is not None:
            progress(out, page.buckets_done, buckets)
    return out
