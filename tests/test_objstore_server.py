"""The Twisted adapter on StringTransport: reply order, read-your-writes, back-pressure,
limits and timeouts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from objstore import protocol as p
from objstore.items import StoreOp
from objstore.replies import Reply, Status, Value, Values
from objstore.server import (
    TOO_MANY_CONNECTIONS,
    Answer,
    ObjstoreFactory,
    ObjstoreProtocol,
    Pending,
)
from objstore.stats import LATENCY_BUCKETS, Counters, LatencySampler
from ops.config import ObjstoreConfig
from runtime.workers import reuseport_socket
from tests.objstore_harness import Harness, exchange


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_set_then_get(h: Harness) -> None:
    """A stored value comes back from get on the same connection."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set k 3 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert exchange(proto, tr, b"get k\r\n") == b"VALUE k 3 2\r\nhi\r\nEND\r\n"


def test_replies_wait_for_group_commit_and_keep_order(h: Harness) -> None:
    """STORED is sent only after the commit, and replies keep request order."""
    held = h.hold_writes()
    proto, tr = h.connect()
    out = exchange(proto, tr, b"version\r\nset a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nmn\r\n")
    # version is answered; the sets wait for the commit; mn waits behind them.
    assert out.startswith(b"VERSION ")
    assert b"STORED" not in out and b"MN" not in out
    assert len(held.queue) == 2
    held.release()
    assert tr.value() == b"STORED\r\nSTORED\r\nMN\r\n"


def test_read_your_writes_after_noreply(h: Harness) -> None:
    """A get after a pending noreply set on the same connection sees the new value."""
    held = h.hold_writes()
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set k 0 0 3 noreply\r\nnew\r\nget k\r\n") == b""
    held.release()
    assert tr.value() == b"VALUE k 0 3\r\nnew\r\nEND\r\n"


PIPELINE = (b"set a 0 0 5\r\nhello\r\nget a b\r\nmg a v c\r\nincr n 1\r\nbogus\r\n"
            b"delete a noreply\r\nms c 2 T0 k\r\nhi\r\nmn\r\nget a c\r\n")


def test_pipeline_split_at_every_byte_boundary(tmp_path: Path) -> None:
    """The same pipeline gives the same bytes however the network cuts it."""
    reference = None
    for cut in range(len(PIPELINE) + 1):
        harness = Harness(tmp_path / f"c{cut}")
        harness.clock.advance(0)
        proto, tr = harness.connect()
        proto.dataReceived(PIPELINE[:cut])
        proto.dataReceived(PIPELINE[cut:])
        # CAS uniques are the same in every fresh store, so whole replies compare.
        got = tr.value()
        harness.close()
        if reference is None:
            reference = got
            assert got.startswith(b"STORED\r\nVALUE a 0 5\r\nhello\r\nEND\r\nVA 5 c1\r\n")
            assert got.endswith(b"HD kc\r\nMN\r\nVALUE c 0 2\r\nhi\r\nEND\r\n")
        assert got == reference, cut


def test_quit_closes_after_earlier_replies(h: Harness) -> None:
    """quit closes the connection once the replies before it are out."""
    held = h.hold_writes()
    proto, tr = h.connect()
    proto.dataReceived(b"set a 0 0 1\r\nx\r\nquit\r\nget a\r\n")
    assert not tr.disconnecting
    held.release()
    assert tr.value() == b"STORED\r\n"
    assert tr.disconnecting


def test_line_too_long_closes(tmp_path: Path) -> None:
    """A line past max_line gets CLIENT_ERROR line too long and the connection closes."""
    h = Harness(tmp_path, max_line=512)
    proto, tr = h.connect()
    assert exchange(proto, tr, b"touch " + b"a" * 600) == b"CLIENT_ERROR line too long\r\n"
    assert tr.disconnecting
    h.close()


def test_connection_limit(tmp_path: Path) -> None:
    """Past max_connections a client gets memcached's error and is closed; a slot freed by
    a disconnect is reused."""
    h = Harness(tmp_path, max_connections=2)
    a, _ = h.connect()
    h.connect()
    third, tr3 = h.connect()
    assert tr3.value() == TOO_MANY_CONNECTIONS and tr3.disconnecting
    assert h.counters.rejected_connections == 1
    assert h.counters.curr_connections == 2
    third.connectionLost(None)
    assert h.counters.curr_connections == 2
    a.connectionLost(None)
    _, tr4 = h.connect()
    assert not tr4.disconnecting
    h.close()


def test_idle_timeout(tmp_path: Path) -> None:
    """A connection silent for idle_timeout seconds is closed; activity resets the timer."""
    h = Harness(tmp_path, idle_timeout=10.0)
    proto, tr = h.connect()
    h.clock.advance(9)
    exchange(proto, tr, b"version\r\n")
    h.clock.advance(9)
    assert not tr.disconnecting
    h.clock.advance(2)
    assert tr.disconnecting
    assert h.counters.idle_dropped == 1
    h.close()


def test_slow_reader_stops_execution_and_is_cut_off(tmp_path: Path) -> None:
    """While the transport is full no command runs; a reader slow past the timeout is
    aborted."""
    h = Harness(tmp_path, slow_reader_timeout=5.0)
    proto, tr = h.connect()
    proto.pauseProducing()  # what the transport does when its buffer is full
    assert tr.producerState == "paused"
    assert exchange(proto, tr, b"version\r\nversion\r\n") == b""
    h.clock.advance(4)
    proto.resumeProducing()
    assert tr.value().count(b"VERSION") == 2
    proto.pauseProducing()
    h.clock.advance(6)
    assert tr.disconnected  # aborted
    assert h.counters.slow_readers_dropped == 1
    h.close()


def test_pipeline_depth_pauses_reading(tmp_path: Path) -> None:
    """With max_pipeline answers outstanding the protocol stops reading, and resumes when
    they complete."""
    h = Harness(tmp_path, max_pipeline=3)
    held = h.hold_writes()
    proto, tr = h.connect()
    proto.dataReceived(b"".join(b"set k%d 0 0 1\r\nx\r\n" % i for i in range(6)))
    assert len(held.queue) == 3
    assert tr.producerState == "paused"
    held.release()
    assert len(held.queue) == 3
    held.release()
    assert tr.value() == b"STORED\r\n" * 6
    assert tr.producerState == "producing"
    h.close()


def test_metadump_streams_every_key_then_end(tmp_path: Path) -> None:
    """lru_crawler metadump lists every item (across several batches) and ends with END."""
    h = Harness(tmp_path)
    proto, tr = h.connect()
    n = 2500
    proto.dataReceived(b"".join(b"set key%05d 0 0 1 noreply\r\nx\r\n" % i for i in range(n)))
    out = exchange(proto, tr, b"lru_crawler metadump all\r\n")
    lines = out.split(b"\n")
    assert out.endswith(b"END\r\n")
    assert len([ln for ln in lines if ln.startswith(b"key=")]) == n
    assert lines[0].startswith(b"key=key00000 exp=-1 la=1800000000 cas=1 fetch=no cls=1 size=")
    h.close()


def test_metadump_pauses_with_a_slow_reader(tmp_path: Path) -> None:
    """A metadump stream stops producing while the transport is full."""
    h = Harness(tmp_path)
    proto, tr = h.connect()
    proto.dataReceived(b"".join(b"set key%05d 0 0 1 noreply\r\nx\r\n" % i for i in range(2500)))
    tr.clear()
    # Pause as soon as the first chunk is written, as a full socket buffer would.
    original = tr.writeSequence

    def write_and_pause(data: list[bytes]) -> None:
        original(data)
        proto.pauseProducing()

    tr.writeSequence = write_and_pause  # type: ignore[method-assign]
    proto.dataReceived(b"lru_crawler metadump all\r\n")
    first = tr.value()
    assert 0 < first.count(b"key=") < 2500 and not first.endswith(b"END\r\n")
    tr.writeSequence = original  # type: ignore[method-assign]
    proto.resumeProducing()
    assert tr.value().count(b"key=") == 2500 and tr.value().endswith(b"END\r\n")
    h.close()


def test_connection_lost_with_pending_writes(h: Harness) -> None:
    """A client that leaves with writes pending does not break the server; the writes
    still commit."""
    held = h.hold_writes()
    proto, _tr = h.connect()
    proto.dataReceived(b"set k 0 0 1\r\nx\r\n")
    proto.connectionLost(None)
    held.release()
    assert h.storage.get(b"k") is not None
    assert h.counters.curr_connections == 0


def test_sampled_set_latency_is_counted_when_the_write_is_durable(h: Harness) -> None:
    """A sampled set's latency is its time to the durable reply: counted once its write
    completes, not when it is queued."""
    h.factory.latency = LatencySampler(h.counters, sample=1)  # time every request
    held = h.hold_writes()
    proto, tr = h.connect()
    proto.dataReceived(b"set a 0 0 1\r\nx\r\nset b 0 0 1 noreply\r\ny\r\n")
    assert sum(h.counters.latency) == 0
    held.release()
    assert tr.value() == b"STORED\r\n"
    sets = h.counters.latency[len(LATENCY_BUCKETS) + 1:]
    assert sum(sets) == 2


def test_a_completion_that_raises_is_answered_as_an_error_in_order(h: Harness) -> None:
    """A write's completion that raises (a bug) is logged and answered SERVER_ERROR in
    its place; the replies before and after it are unaffected."""
    held = h.hold_writes()
    proto, tr = h.connect()

    def broken(_result: object) -> Reply | None:
        raise RuntimeError("bug")

    proto.dataReceived(b"set a 0 0 1\r\nx\r\n")
    answer: Pending[object] = Pending(broken)
    h.storage.enqueue(StoreOp(b"set", b"b", b"y"), answer.complete)
    proto._answer(answer, p.Store(b"set", b"b", 0, 0, b"y"))
    proto.dataReceived(b"mn\r\n")
    held.release()
    assert tr.value() == b"STORED\r\nSERVER_ERROR internal error\r\nMN\r\n"
    assert h.storage.get(b"b") is not None


def test_reuseport_socket_allows_a_second_listener() -> None:
    """Two SO_REUSEPORT listeners can share one port (how workers share it)."""
    a = reuseport_socket("127.0.0.1", 0)
    try:
        port = a.getsockname()[1]
        b = reuseport_socket("127.0.0.1", port)
        b.close()
    finally:
        a.close()


class _DeferredHandler:
    """A handler whose every answer comes later (as directord's do): the test fires them."""

    def __init__(self, serial_writes: bool = False) -> None:
        self.pending: list[tuple[bytes, defer.Deferred[Reply | None]]] = []
        self.serial_writes = serial_writes
        self.cancelled: list[bytes] = []

    @staticmethod
    def is_write(cmd: p.Command) -> bool:
        return isinstance(cmd, p.Store | p.Delete)

    def execute(self, cmd: p.Command) -> Answer:
        key = cmd.keys[0] if isinstance(cmd, p.Get) else getattr(cmd, "key", b"")
        d: defer.Deferred[Reply | None] = defer.Deferred(
            lambda _d: self.cancelled.append(key))
        self.pending.append((key, d))
        return d

    def fire(self, key: bytes, reply: Reply) -> None:
        for i, (k, d) in enumerate(self.pending):
            if k == key:
                del self.pending[i]
                d.callback(reply)
                return
        raise AssertionError(f"no pending command for {key!r}")


def test_any_handler_deferred_reads_run_together_replies_keep_order(tmp_path: Path) -> None:
    """With a handler whose reads answer later, pipelined reads all start at once, replies
    leave in request order, and a read behind a pending write waits for it."""
    handler = _DeferredHandler()
    clock = task.Clock()
    factory = ObjstoreFactory(handler, ObjstoreConfig(), Counters(), clock)
    proto = factory.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    proto.dataReceived(b"get a\r\nget b\r\nset w 0 0 1\r\nx\r\nget c\r\n")
    # Both reads and the write started; the read after the write is held.
    assert [k for k, _ in handler.pending] == [b"a", b"b", b"w"]
    handler.fire(b"b", Values((Value(b"b", 0, b"2"),)))
    assert tr.value() == b""  # a is still owed first
    handler.fire(b"a", Values(()))
    assert tr.value() == b"END\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
    handler.fire(b"w", Status(b"STORED"))
    assert [k for k, _ in handler.pending] == [b"c"]
    handler.fire(b"c", Values(()))
    assert tr.value().endswith(b"STORED\r\nEND\r\n")


def _deferred_connection(handler: _DeferredHandler, **config: Any
                         ) -> tuple[ObjstoreProtocol, StringTransport]:
    factory = ObjstoreFactory(handler, dataclasses.replace(ObjstoreConfig(), **config),
                              Counters(), task.Clock())
    proto = factory.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


def test_serial_writes_take_effect_in_the_order_sent(tmp_path: Path) -> None:
    """With a handler whose writes take effect when answered, each write starts only once
    every earlier command of the connection is answered, and reads wait for writes."""
    handler = _DeferredHandler(serial_writes=True)
    proto, tr = _deferred_connection(handler)
    proto.dataReceived(b"get r\r\nset k 0 0 2\r\nv1\r\ndelete k\r\nset k 0 0 2\r\nv2\r\n"
                       b"delete k\r\nget k\r\n")
    assert [k for k, _ in handler.pending] == [b"r"]  # the set waits for the read
    handler.fire(b"r", Values(()))
    for reply in (b"STORED", b"DELETED", b"STORED", b"DELETED"):
        assert [k for k, _ in handler.pending] == [b"k"]  # one write at a time
        handler.fire(b"k", Status(reply))
    assert [k for k, _ in handler.pending] == [b"k"]  # the last get, after the writes
    handler.fire(b"k", Values(()))
    assert tr.value() == b"END\r\nSTORED\r\nDELETED\r\nSTORED\r\nDELETED\r\nEND\r\n"


class _CountingTransport(StringTransport):
    """StringTransport that counts the writes it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.writes += 1
        super().writeSequence(seq)


def test_replies_completed_together_leave_in_one_write(tmp_path: Path) -> None:
    """Answers completed inside replies_together() are written when it ends, each
    connection's replies in one write, in request order; outside it each completion is
    written at once."""
    handler = _DeferredHandler()
    factory = ObjstoreFactory(handler, ObjstoreConfig(), Counters(), task.Clock())
    protos, transports = [], []
    for _ in range(2):
        proto = factory.buildProtocol(None)
        tr = _CountingTransport()
        proto.makeConnection(tr)
        proto.dataReceived(b"get a\r\nget b\r\nget c\r\n")
        protos.append(proto)
        transports.append(tr)
    with factory.replies_together():
        for _ in range(2):
            for key in (b"a", b"b"):
                handler.fire(key, Values((Value(key, 0, key.upper()),)))
        assert [tr.writes for tr in transports] == [0, 0]  # held until the block ends
    assert [tr.writes for tr in transports] == [1, 1]
    assert [tr.value() for tr in transports] == [
        b"VALUE a 0 1\r\nA\r\nEND\r\nVALUE b 0 1\r\nB\r\nEND\r\n"] * 2
    handler.fire(b"c", Values(()))  # outside the block: written at once
    assert [tr.writes for tr in transports] == [2, 1]
    assert transports[0].value().endswith(b"B\r\nEND\r\nEND\r\n")


def test_serial_writes_leave_reads_concurrent(tmp_path: Path) -> None:
    """Serial writes do not serialise reads: pipelined reads with no write between them
    all start at once."""
    handler = _DeferredHandler(serial_writes=True)
    proto, _tr = _deferred_connection(handler)
    proto.dataReceived(b"get a\r\nget b\r\nmg c v\r\n")
    assert [k for k, _ in handler.pending] == [b"a", b"b", b"c"]


class _BigValues(_DeferredHandler):
    """Every get answers, later, one value of ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(serial_writes=True)
        self.value = b"x" * size

    def fire_all(self) -> None:
        while self.pending:
            key, d = self.pending.pop(0)
            d.callback(Values((Value(key, 0, self.value),)))


def test_unread_replies_are_bounded_in_bytes(tmp_path: Path) -> None:
    """A client that pipelines gets of big values without reading them gets at most about
    max_reply_buffer bytes of replies queued: past it no command starts and the connection
    is not read; once the client reads, the rest are served."""
    mib = 1 << 20
    handler = _BigValues(mib)
    proto, tr = _deferred_connection(handler, max_reply_buffer=4 * mib, max_item_size=mib)
    proto.pauseProducing()  # the client reads nothing: its socket is full
    proto.dataReceived(b"".join(b"get k%d\r\n" % i for i in range(200)))
    started = 0
    for _ in range(200):
        if not handler.pending:
            break
        started += len(handler.pending)
        handler.fire_all()
    assert started == 0  # nothing runs while the transport is full
    proto.resumeProducing()
    proto.pauseProducing()
    started = 0
    while handler.pending:
        started += len(handler.pending)
        handler.fire_all()
    # At most the budget's worth of 1 MiB values started (and one more in flight).
    assert 0 < started <= 5
    assert proto._queued + proto._out_len <= 5 * (mib + 100)
    assert tr.producerState == "paused"
    served = 0
    for _ in range(400):
        proto.resumeProducing()
        served += tr.value().count(b"VALUE ")
        tr.clear()
        handler.fire_all()
        if served == 200:
            break
    assert served == 200


def test_connection_lost_cancels_pending_reads_not_writes(tmp_path: Path) -> None:
    """A connection that goes away cancels the reads it was waiting for, lets started
    writes finish, and drops the commands it had not started."""
    handler = _DeferredHandler(serial_writes=True)
    proto, _tr = _deferred_connection(handler)
    proto.dataReceived(b"set w 0 0 1\r\nx\r\n")
    write = handler.pending[0][1]
    proto.dataReceived(b"get r\r\n")  # held behind the write
    handler.fire(b"w", Status(b"STORED"))
    read = handler.pending[0][1]
    proto.dataReceived(b"set w2 0 0 1\r\ny\r\n")  # held behind the read
    proto.connectionLost(None)
    assert read.called and write.called
    assert [k for k, _ in handler.pending] == [b"r"]  # w2 never started
    assert handler.cancelled == [b"r"]


class _TcpLikeTransport(StringTransport):
    """StringTransport with the unsent-bytes bookkeeping of Twisted's TCP transport."""

    def __init__(self) -> None:
        super().__init__()
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0


def test_slow_reader_that_keeps_reading_is_not_cut(tmp_path: Path) -> None:
    """A reader whose transport stays full but keeps draining is served past
    slow_reader_timeout; one that drains nothing for that long is aborted."""
    h = Harness(tmp_path, slow_reader_timeout=5.0)
    proto = h.factory.buildProtocol(None)
    tr = _TcpLikeTransport()
    proto.makeConnection(tr)
    tr._tempDataLen = 100_000
    proto.pauseProducing()
    for _ in range(20):
        h.clock.advance(1)
        tr._tempDataLen -= 1000  # the client reads a little every second
    assert not tr.disconnected
    h.clock.pump([1] * 11)  # nothing read for two checks (one every 5 s)
    assert tr.disconnected
    assert h.counters.slow_readers_dropped == 1
    h.close()


def test_stats_conns_lists_open_connections(h: Harness) -> None:
    """stats conns answers, per open connection, its peer, local address, state and idle
    seconds, as memcached does."""
    other, _ = h.connect()
    proto, tr = h.connect()
    h.clock.advance(7)
    out = exchange(proto, tr, b"stats conns\r\n").decode()
    lines = out.splitlines()
    assert lines[-1] == "END"
    assert sum(1 for line in lines if line.endswith(":state conn_parse_cmd")) == 2
    assert any(line.startswith("STAT ") and ":addr tcp:" in line for line in lines)
    assert any(line.endswith(":secs_since_last_cmd 7") for line in lines)  # the silent one
    other.connectionLost(None)
