"""A resumable walk over every object server's key list: what index rebuild and the items
migration share.

Theory of operation.  A :class:`NodeWalk` run goes through the nodes it covers in id
order.  For each it lists the node's keys (:class:`director.listing.Listing`), picks the
index entries it cares about (:meth:`NodeWalk.entries`) and hands them to
:meth:`NodeWalk.page` a page at a time, in index-id order.  After every page the node in
progress and the last index id done on it (``node``, ``after``) are saved in the job hash
with the run's counters (:attr:`NodeWalk.counters`), so Ctrl-C, a crash or a lost lease
cost at most the page in hand; the next invocation lists that node again and carries on
after ``after``.  A node that is down, cannot be listed or stops answering is skipped and
named (``skipped``): run the job for it alone once it answers.

Guarding deletes.  The walks record index entries from what a node listed a moment
before; a delete in between (gc's, ``inventory --fix``'s) would leave an entry naming a
copy that is gone.  So a run holds gc's lease for its whole length and the lease of
``inventory:<node id>`` while it works on that node (:class:`Guards`): neither runs
meanwhile, and a walk waits for them likewise (:class:`~director.errors.LeaseHeld`).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from director.background import BackgroundJob, PassControl, PassStats, throttle
from director.errors import DirectorError, LeaseHeld, LeaseLost
from director.gcwatch import GC_JOB
from director.jobstate import JobState, integer, number
from director.lease import Lease
from director.listing import Listing
from director.memcache_client import NodeError
from director.nodes import Node, NodeState

if TYPE_CHECKING:
    from director.client import BlobClient
    from director.registry import RegistrySnapshot

#: ``after`` of a node whose every entry is done (sorts after every index id).
NODE_DONE = "~"
#: Job-hash fields of a run in progress beside the job's counters.
WALK_FIELDS = ("started_at", "node", "after", "skipped")


@dataclass
class WalkStats(PassStats):
    """A walk run so far (resumed invocations included); ``items`` counts index entries
    handled.

    :param node: the node in progress.
    :param nodes: nodes the run covers; ``nodes_done`` of them done.
    :param keys: keys listed on the nodes done (and the one in progress).
    :param skipped: nodes not walked (down, or could not be listed or asked).
    :param finished: the run went through every node and ended.
    """

    node: str = ""
    nodes: int = 0
    nodes_done: int = 0
    keys: int = 0
    finished: bool = False
    skipped: list[str] = field(default_factory=list)


W = TypeVar("W", bound=WalkStats)


class NodeWalk(BackgroundJob[W]):
    """One walk run (see the module docstring); subclasses say what a page does.

    :param node_id: only this node's keys (default: every node registered and not
        removed).
    :param rate: at most this many stored bytes read per second (None: no limit).
    :param sleep: how the rate limit waits (tests pass a faster one).
    :param page: index entries per step.
    """

    #: The job's integer counters, kept in the job hash while a run is in progress.
    counters: tuple[str, ...] = ("items", "keys")

    def __init__(self, client: BlobClient, *, node_id: str | None = None,
                 rate: float | None = None, sleep: Callable[[float], Any] = asyncio.sleep,
                 page: int = 256, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        if rate is not None and rate <= 0:
            raise ValueError(f"{self.job} rate must be positive, got {rate}")
        self.node_id = node_id
        self.rate = rate
        self._sleep = sleep
        self.page_size = page

    @property
    def run_fields(self) -> tuple[str, ...]:
        """The job-hash fields of a run in progress (forgotten when it ends)."""
        return (*WALK_FIELDS, *self.counters)

    # -- what a subclass decides -----------------------------------------------------------

    @abstractmethod
    def new_stats(self, nodes: int) -> W:
        """Empty stats of a run over ``nodes`` nodes."""

    def entries(self, listing: Listing) -> set[str]:
        """The index entries of a node's keys this walk handles (default: all)."""
        return listing.index_ids()

    @abstractmethod
    async def page(self, node: Node, listing: Listing, page: Sequence[str],
                   stats: W) -> int | None:
        """Handle one page of the node's entries; the stored bytes read, or None when
        the node could not be asked about some copy (nothing of the page may be counted
        then: the node is skipped)."""

    def finished_fields(self, stats: W) -> dict[str, str | int | float]:
        """What the job hash keeps of a finished run (beside ``last_finished``)."""
        return {}

    async def before_finish(self, stats: W) -> None:
        """Called once a run went through every node, before its state is forgotten."""

    # -- the walk ---------------------------------------------------------------------------

    def nodes(self, snap: RegistrySnapshot) -> list[Node]:
        """The nodes the run covers, in id order: the one asked for, or every node
        registered and not removed (down ones are skipped and named).

        :raises LookupError: the node asked for is not registered.
        """
        if self.node_id is not None:
            node = snap.get(self.node_id)
            if node is None:
                raise LookupError(f"no object server {self.node_id!r} is registered")
            return [node]
        return sorted((n for n in snap.nodes if n.state is not NodeState.REMOVED),
                      key=lambda n: n.id)

    async def run_pass(self, control: PassControl) -> W:
        state = control.state(self)
        fields = await state.load()
        nodes = self.nodes(await self.client.snapshot(force=True))
        stats = self.new_stats(len(nodes))
        if "started_at" not in fields:
            fields = {"started_at": repr(self.now()), "node": "", "after": ""}
            await state.save(fields)
        for name in self.counters:
            setattr(stats, name, integer(fields, name))
        stats.skipped = [n for n in fields.get("skipped", "").split(",") if n]
        at, after = fields.get("node", ""), fields.get("after", "")
        guards = Guards(self)
        await guards.take(GC_JOB)
        try:
            for node in nodes:
                resume = after if node.id == at else ""
                if node.id < at or resume == NODE_DONE or node.id in stats.skipped:
                    stats.nodes_done += 1
                    continue
                stats.node = node.id
                if not node.readable:
                    await self._skip(node, state, stats)
                elif not await self._walk(node, resume, control, state, stats, guards):
                    return stats
                stats.nodes_done += 1
            await self.before_finish(stats)
        finally:
            await guards.release_all()
        await state.save({"last_finished": self.now(), "last_skipped": ",".join(stats.skipped),
                          **self.finished_fields(stats)})
        await state.forget(*self.run_fields)
        stats.finished = True
        stats.node = ""
        await control.checkpoint(stats)
        stats.interrupted = False  # the run is over; nothing was cut short
        return stats

    async def _walk(self, node: Node, after: str, control: PassControl, state: JobState,
                    stats: W, guards: Guards) -> bool:
        """Walk one node's entries after ``after``; False when the pass must stop."""
        await guards.take(f"inventory:{node.id}")
        try:
            try:
                listing = Listing.of(await self.client.node_client(node).metadump())
            except (NodeError, OSError):
                await self._skip(node, state, stats)
                return True
            keys_before = stats.keys
            stats.keys += listing.keys
            todo = sorted(i for i in self.entries(listing) if i > after)
            stats.total = stats.items + len(todo)
            started, read = self.clock(), 0
            for at in range(0, len(todo), self.page_size):
                page = todo[at:at + self.page_size]
                got = await self.page(node, listing, page, stats)
                if got is None:
                    stats.keys = keys_before
                    await self._skip(node, state, stats)
                    return True
                read += got
                await state.save({"node": node.id, "after": page[-1],
                                  **self._counters(stats, keys_before)})
                if not await control.checkpoint(stats) or not await guards.keep(stats):
                    return False
                if not await throttle(control, stats, rate=self.rate, done=read,
                                      elapsed=lambda: self.clock() - started,
                                      sleep=self._sleep):
                    return False
            await state.save({"node": node.id, "after": NODE_DONE,
                              **self._counters(stats, stats.keys)})
            return True
        finally:
            await guards.release(f"inventory:{node.id}")

    async def _skip(self, node: Node, state: JobState, stats: W) -> None:
        stats.skipped.append(node.id)
        stats.errors += 1
        await state.save({"node": node.id, "after": NODE_DONE,
                          "skipped": ",".join(stats.skipped),
                          **self._counters(stats, stats.keys)})

    def _counters(self, stats: W, keys: int) -> dict[str, int]:
        """The counters to save; ``keys`` counts only listings of finished nodes (a
        resumed node is listed, and counted, again)."""
        return {**{name: getattr(stats, name) for name in self.counters}, "keys": keys}

    async def status(self) -> dict[str, Any]:
        """The job hash as an operator wants it (``--status``)."""
        fields = await JobState(self.runner, self.keys, self.job).load()
        text = ("node", "after", "skipped", "last_skipped")
        return {"running": "started_at" in fields,
                **{k: v if k in text else number(fields, k) for k, v in fields.items()}}


class Guards:
    """Leases a job holds beside its own (gc's, a node's inventory), with its token, so
    that the jobs that delete copies do not run meanwhile."""

    def __init__(self, job: BackgroundJob[Any]) -> None:
        self.job = job
        self.held: dict[str, Lease] = {}

    async def take(self, name: str) -> None:
        """:raises LeaseHeld: that job runs now."""
        job = self.job
        lease = Lease(job.runner, job.keys, name, ttl=job.dconf.lease_ttl, token=job.token,
                      clock=job.clock)
        if not await lease.acquire():
            raise LeaseHeld(name, await lease.holder())
        self.held[name] = lease

    async def keep(self, stats: PassStats) -> bool:
        """Renew every lease held; False (and ``stats.interrupted``) when one was lost."""
        try:
            for lease in self.held.values():
                await lease.keep()
        except LeaseLost:
            stats.interrupted = True
            return False
        return True

    async def release(self, name: str) -> None:
        lease = self.held.pop(name, None)
        if lease is not None:
            with contextlib.suppress(DirectorError):  # it runs out by itself
                await lease.release()

    async def release_all(self) -> None:
        for name in list(self.held):
            await self.release(name)
