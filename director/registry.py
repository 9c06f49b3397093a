"""The node registry in Redis Cluster: which object servers exist and how loaded they are.

Registration is explicit.  An object server that reports to Redis (objstored does so
from its first second) but was never added with ``objmail node add`` is listed as
``new`` and gets no blobs: a large site decides when a machine joins, in which zone
and with which weight, and a misconfigured test box pointed at production Redis does
not start receiving mail.  ``node add`` gives the node its small *number* (what the
location index stores instead of the id; numbers are never reused) and makes it
``active``.

A registered node's effective state combines what the operator set (``active``,
``draining``, ``dead``, ``removed``) with its load report: a report expires after the
object server's ``report_ttl``, and a node without a live report, or whose report is
late (:attr:`director.nodes.LoadReport.stale`), is ``down``.

All registry keys share the hash tag ``{reg}`` so that adding a node (number, record,
id -> number map) is one Lua script, atomic.  Reports live under the object server's
own keys (:mod:`objstore.reporter`); they are read, never written, here.

*Numbers outlive the registry.*  The location index names nodes by number, so a node
must keep its number even when Redis loses the registry (a FLUSHALL of the masters, a
master lost with its replica).  Each object server reads the ``number`` of its own record
with every load report, keeps it in its data directory and reports it; :meth:`Registry.add`
of a node the registry does not know gives it the number it reports (unless another node
has it), and when the number counter is gone too, hands new nodes numbers above every
number a reporting node keeps.  :meth:`Registry.reregister` (run by ``objmail index
rebuild``) adds back every node that reports a kept number.  A removed node's object
server forgets its number, so it is never brought back by this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from director.errors import RegistryDamaged, RegistryError, RemoveRefused, UnknownNode
from director.index import LocationIndex, StripResult
from director.keys import Keyspace, check_node_id
from director.nodes import (
    ADMIN_STATES,
    DEFAULT_SITE,
    LoadReport,
    Node,
    NodeState,
    parse_report,
)
from director.placement import Placer
from director.policy import PlacementPolicy
from director.redisconn import (
    ClusterRunner,
    Command,
    LuaScript,
    RetryPolicy,
    new_cluster_client,
)
from runtime.config import parse_hostport
from runtime.secrets import NO_REDIS_AUTH, RedisAuth

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

log = logging.getLogger(__name__)

# KEYS: node record, id->number map, number counter.  ARGV: id, address, zone, tier,
# weight, now, wanted, floor, site.  A removed node may be added again: it keeps its number.
# A node the map does not know gets ``wanted`` (the number it reports keeping from a
# registry that was lost) unless another id has it; otherwise the next number, above
# ``floor`` (the highest number any node reports) when the counter was lost too.
_ADD = LuaScript("objmail_registry_add", """
local node_key, numbers, counter = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local state = redis.call('HGET', node_key, 'state')
if state and state ~= 'removed' then return {'exists', state} end
local num = redis.call('HGET', numbers, id)
if not num then
  local wanted = tonumber(ARGV[7])
  if wanted and wanted > 0 then
    for _, taken in ipairs(redis.call('HVALS', numbers)) do
      if tonumber(taken) == wanted then wanted = nil; break end
    end
  else
    wanted = nil
  end
  local last = tonumber(redis.call('GET', counter) or '0')
  local floor = tonumber(ARGV[8]) or 0
  if wanted then
    num = tostring(wanted)
    if wanted > last then redis.call('SET', counter, wanted) end
  else
    if floor > last then redis.call('SET', counter, floor) end
    num = tostring(redis.call('INCR', counter))
  end
  redis.call('HSET', numbers, id, num)
end
redis.call('HSET', node_key, 'id', id, 'address', ARGV[2], 'zone', ARGV[3], 'tier', ARGV[4],
           'weight', ARGV[5], 'state', 'active', 'number', num, 'added', ARGV[6],
           'changed', ARGV[6], 'site', ARGV[9])
return {'ok', num}
""")

# KEYS: node record.  ARGV: new state, now.  Refuses unknown and removed nodes.
_SET_STATE = LuaScript("objmail_registry_set_state", """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'removed' and ARGV[1] ~= 'removed' then return 'removed' end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'changed', ARGV[2])
return 'ok'
""")


@dataclass(frozen=True)
class RegistrySnapshot:
    """Every registered node with its live report, as of ``taken_at``."""

    nodes: tuple[Node, ...]
    taken_at: float
    _by_id: dict[str, Node] = field(init=False, repr=False, compare=False)
    _by_number: dict[int, Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {n.id: n for n in self.nodes})
        object.__setattr__(self, "_by_number", {n.number: n for n in self.nodes if n.number})

    def get(self, node_id: str) -> Node | None:
        return self._by_id.get(node_id)

    def by_number(self, number: int) -> Node | None:
        return self._by_number.get(number)

    def resolve(self, numbers: Sequence[int]) -> list[Node]:
        """Nodes for index numbers (numbers no longer registered are skipped)."""
        return [n for n in map(self._by_number.get, numbers) if n is not None]

    def placer(self, policy: PlacementPolicy | None = None) -> Placer:
        return Placer(self.nodes, policy)

    def in_state(self, state: NodeState) -> list[Node]:
        return [n for n in self.nodes if n.state is state]


class Registry:
    """Async client of the node registry; create with :meth:`open`."""

    def __init__(self, runner: ClusterRunner, keys: Keyspace | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.runner = runner
        self.keys = keys or Keyspace()
        self._clock = clock
        runner.register(_ADD, _SET_STATE)

    @classmethod
    async def open(cls, addresses: Sequence[str], *, keys: Keyspace | None = None,
                   retry: RetryPolicy | None = None, auth: RedisAuth = NO_REDIS_AUTH,
                   clock: Callable[[], float] = time.time) -> Registry:
        runner = ClusterRunner(new_cluster_client(addresses, auth=auth), retry=retry)
        return cls(runner, keys, clock=clock)

    async def aclose(self) -> None:
        await self.runner.aclose()

    # -- reading ------------------------------------------------------------------------

    async def snapshot(self) -> RegistrySnapshot:
        """Every registered node (removed ones too) with its live report.

        Two round trips whatever the number of nodes; directors refresh this every few
        seconds and build their :class:`~director.placement.Placer` from it.
        """
        numbers_key = self.keys.node_numbers
        (numbers,) = await self.runner.run("registry read", [
            Command(numbers_key, ("HGETALL", numbers_key))])
        ids = sorted(_text(k) for k in _as_dict(numbers))
        commands = []
        for node_id in ids:
            commands.append(Command(self.keys.node(node_id),
                                    ("HGETALL", self.keys.node(node_id))))
            commands += self._report_commands(node_id)
        replies = await self.runner.run("registry read", commands)
        nodes = []
        for i, node_id in enumerate(ids):
            record = _as_dict(replies[3 * i])
            if record:
                nodes.append(_node_from(node_id, record,
                                        _report_from(replies[3 * i + 1], replies[3 * i + 2])))
        nodes.sort(key=lambda n: n.number)
        return RegistrySnapshot(tuple(nodes), self._clock())

    async def get(self, node_id: str) -> Node:
        """One registered node.

        :raises UnknownNode: no node with that id was ever added.
        """
        key = self.keys.node(check_node_id(node_id))
        record, report, ttl = await self.runner.run("registry read", [
            Command(key, ("HGETALL", key)), *self._report_commands(node_id)])
        if not record:
            raise UnknownNode(f"no node {node_id!r} is registered (see objmail node list)")
        return _node_from(node_id, _as_dict(record), _report_from(report, ttl))

    def _report_commands(self, node_id: str) -> list[Command]:
        """Read a node's report and how long it still lives (its age, without
        comparing clocks: see :func:`director.nodes.parse_report`)."""
        key = self.keys.report(node_id)
        return [Command(key, ("HGETALL", key)), Command(key, ("PTTL", key))]

    async def unregistered(self) -> list[Node]:
        """Object servers that report but were never added: state ``new``.

        Found by SCAN over every master, which costs time in proportion to the whole
        keyspace: meant for ``objmail node list`` and ``node add``, not for hot paths.
        """
        registered = {n.id for n in (await self.snapshot()).nodes}
        pattern = self.keys.report_pattern

        async def scan(client: RedisCluster) -> list[str]:
            found = []
            async for key in client.scan_iter(match=pattern, count=1000):
                node_id = self.keys.report_node_id(_text(key))
                if node_id is not None and node_id not in registered:
                    found.append(node_id)
            return found

        ids = sorted(set(await self.runner.call("registry discover", scan)))
        replies = await self.runner.run("registry read", [
            c for i in ids for c in self._report_commands(i)])
        out = []
        for i, node_id in enumerate(ids):
            report = _report_from(replies[2 * i], replies[2 * i + 1])
            if report is not None:
                out.append(Node(id=node_id, number=0, address=report.address,
                                zone=report.zone, tier=report.tier, weight=0.0,
                                site=report.site or DEFAULT_SITE,
                                admin_state=NodeState.NEW, report=report))
        return out

    async def reporter_at(self, address: str) -> LoadReport | None:
        """The live report of the unregistered object server listening on ``address``."""
        for node in await self.unregistered():
            if node.report is not None and _same_address(node.report.address, address):
                return node.report
        return None

    async def hot(self, node_ids: Sequence[str], limit: int = 100
                  ) -> dict[str, tuple[tuple[str, float], ...]]:
        """Each node's hottest keys from its load report, hottest first: key -> reads
        per second over the node's last report interval (none when nothing was read)."""
        replies = await self.runner.run("registry hot", [
            Command(self.keys.hot(i), ("ZREVRANGE", self.keys.hot(i), 0, limit - 1,
                                       "WITHSCORES")) for i in node_ids])
        out = {}
        for node_id, reply in zip(node_ids, replies, strict=True):
            pairs = reply if reply and isinstance(reply[0], list | tuple) else \
                list(zip(reply[0::2], reply[1::2], strict=True))
            out[node_id] = tuple((_text(k), float(v)) for k, v in pairs)
        return out

    # -- writing ------------------------------------------------------------------------

    async def add(self, node_id: str, address: str, *, zone: str, tier: str,
                  weight: float = 1.0, site: str = DEFAULT_SITE) -> Node:
        """Register a node (or bring back a removed one, with its old number) as active.

        :raises RegistryError: the id is registered already, another registered node
            has this address, or a value is unusable.
        """
        try:
            check_node_id(node_id)
            parse_hostport(address, "address")
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        if not zone or not tier or not site:
            raise RegistryError("a node needs a site, a zone and a tier")
        if not weight > 0:
            raise RegistryError(f"weight must be positive, got {weight}")
        for other in (await self.snapshot()).nodes:
            if (other.id != node_id and other.state is not NodeState.REMOVED
                    and _same_address(other.address, address)):
                raise RegistryError(f"{address} is already registered as node {other.id}")
        keys = [self.keys.node(node_id), self.keys.node_numbers, self.keys.next_number]
        wanted, floor = await self._kept_numbers(node_id)
        now = repr(self._clock())
        (reply,) = await self.runner.run("node add", [Command(
            keys[0], ("EVALSHA", _ADD.sha, 3, *keys, node_id, address, zone, tier,
                      repr(float(weight)), now, wanted, floor, site))], durable=True)
        status = _text(reply[0])
        if status == "exists":
            raise RegistryError(f"node {node_id} is already registered "
                                f"(state {_text(reply[1])})")
        return await self.get(node_id)

    async def _kept_numbers(self, node_id: str) -> tuple[int, int]:
        """The number the node reports keeping (0: none), and, when the registry's
        counter is gone (a new installation, or a lost registry), the highest number any
        reporting node keeps: no new node may take a number an old one comes back with."""
        counter = self.keys.next_number
        report, last = await self.runner.run("registry read", [
            Command(self.keys.report(node_id), ("HGETALL", self.keys.report(node_id))),
            Command(counter, ("GET", counter))])
        mine = parse_report(_as_dict(report))
        wanted = mine.number if mine is not None and mine.node_id == node_id else 0
        floor = 0
        if last is None:
            floor = max((n.report.number for n in await self.unregistered()
                         if n.report is not None), default=0)
        return wanted, floor

    async def reregister(self) -> list[Node]:
        """Register again every object server that reports a number it kept but that the
        registry does not know (the registry was lost: a FLUSHALL of the Redis masters),
        with that number, the site, zone and tier it reports, weight 1 and state active.

        A node an operator removed forgot its number (objstored follows its record), so
        it is not brought back.  Weights and drains set before the loss must be set
        again.
        """
        back = []
        for node in sorted(await self.unregistered(), key=lambda n: n.id):
            report = node.report
            if report is None or report.number <= 0:
                continue
            try:
                back.append(await self.add(node.id, report.address, zone=report.zone or
                                           "default", tier=report.tier or "default",
                                           site=report.site or DEFAULT_SITE))
            except RegistryError as exc:  # added meanwhile, or its address is taken
                log.warning("could not register %s again: %s", node.id, exc)
        return back

    async def set_state(self, node_id: str, state: NodeState) -> Node:
        """Set the admin state (``active``, ``draining`` or ``removed``).

        :raises UnknownNode: not registered.
        :raises RegistryError: the node was removed (add it again instead).
        """
        if state not in ADMIN_STATES:
            raise RegistryError(f"{state} is not a state an operator sets "
                                f"(one of {', '.join(sorted(ADMIN_STATES))})")
        key = self.keys.node(check_node_id(node_id))
        (reply,) = await self.runner.run("node state", [Command.script(
            _SET_STATE, key, state.value, repr(self._clock()))], durable=True)
        status = _text(reply)
        if status == "missing":
            raise UnknownNode(f"no node {node_id!r} is registered (see objmail node list)")
        if status == "removed":
            raise RegistryError(f"node {node_id} was removed; add it again with objmail "
                                f"node add")
        return await self.get(node_id)

    async def dead(self, node_id: str) -> Node:
        """Declare the node gone for good (``objmail node dead``): its copies stop counting
        at once, so repair replaces them without waiting for ``repair_down_grace``."""
        return await self.set_state(node_id, NodeState.DEAD)

    async def drain(self, node_id: str) -> Node:
        """Stop placing new blobs on the node; the directors move its blobs away."""
        return await self.set_state(node_id, NodeState.DRAINING)

    async def activate(self, node_id: str) -> Node:
        """Undo a drain: the node takes new blobs again."""
        return await self.set_state(node_id, NodeState.ACTIVE)


@dataclass(frozen=True)
class RemoveOutcome:
    """What ``remove_node`` did."""

    node: Node
    strip: StripResult


async def remove_node(registry: Registry, index: LocationIndex, node_id: str, *,
                      progress: Callable[[int, int], None] | None = None) -> RemoveOutcome:
    """Remove a node for good, unless it holds the only copy of any blob.

    A first pass over the index counts the blobs whose only location is the node and
    refuses if there are any.  Then the node is marked ``removed`` (placement and reads
    skip it from the next registry refresh) and a second pass takes its number out of
    every entry.  A blob written to it between the two passes is left in the index
    with the node as its only location and counted in ``strip.kept_sole``.

    :raises RemoveRefused: the node holds sole copies; nothing was changed.
    :raises UnknownNode: no such node.
    """
    node = await registry.get(node_id)
    spaces = (index, index.item_space())  # blobs, then directord's plain items
    if node.admin_state is not NodeState.REMOVED:
        for space in spaces:
            sole = await space.sole_copies(node.number, progress=progress)
            if sole.count:
                raise RemoveRefused(node_id, sole.count, sole.examples)
        node = await registry.set_state(node_id, NodeState.REMOVED)
    strips = [await space.strip_node(node.number, progress=progress) for space in spaces]
    return RemoveOutcome(node, StripResult(sum(s.removed for s in strips),
                                           sum(s.kept_sole for s in strips)))


def _node_from(node_id: str, record: dict[bytes, bytes], report: LoadReport | None) -> Node:
    text = {_text(k): _text(v) for k, v in record.items()}
    try:
        admin = NodeState(text.get("state", "active"))
        return Node(id=node_id, number=int(text["number"]), address=text["address"],
                    zone=text["zone"], tier=text["tier"], weight=float(text["weight"]),
                    admin_state=admin,
                    report=report if report is not None and report.node_id == node_id
                    else None,
                    added_at=float(text.get("added", "0")),
                    # A record from before sites: the installation's one site.
                    site=text.get("site") or DEFAULT_SITE)
    except (KeyError, ValueError) as exc:
        raise RegistryDamaged(f"registry record of node {node_id} is damaged: {exc}") from exc


def _report_from(fields: Any, pttl: Any) -> LoadReport | None:
    """A report from its HGETALL and PTTL replies (PTTL is milliseconds, negative when
    the key has no TTL or is gone)."""
    ttl_ms = int(pttl) if pttl is not None else -1
    return parse_report(_as_dict(fields), ttl_left=ttl_ms / 1000 if ttl_ms >= 0 else None)


def _same_address(a: str, b: str) -> bool:
    try:
        return parse_hostport(a) == parse_hostport(b)
    except ValueError:
        return a == b


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return reply
    items = list(reply or [])
    return dict(zip(items[0::2], items[1::2], strict=True))
