"""memcached's item semantics (objstore/items.py), each write and read, run over both
backends (LMDB in tmp_path, and memory): the same results from both prove the seam."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from objstore.items import (
    ArithOp,
    BaseStore,
    Callback,
    DeleteOp,
    ExpireOp,
    FlushOp,
    MetaGetOp,
    Outcome,
    ReapOp,
    Result,
    StoreOp,
    TouchOp,
    Txn,
    WriteOp,
    absolute_exptime,
)
from objstore.record import HEADER_SIZE, StorageError
from tests.objstore_harness import BACKENDS, MIB, FakeClock, open_store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path,
         clock: FakeClock) -> Iterator[Callable[..., BaseStore]]:
    """Opens stores of the parametrized backend; all are closed after the test."""
    opened: list[BaseStore] = []

    def make(max_item_size: int = MIB) -> BaseStore:
        store = open_store(request.param, tmp_path / f"db{len(opened)}",
                           max_item_size=max_item_size, clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make: Callable[..., BaseStore]) -> BaseStore:
    return make()


def put(store: BaseStore, key: bytes, value: bytes, **kw: object) -> Result:
    return store.execute(StoreOp(b"set", key, value, **kw))  # type: ignore[arg-type]


def test_absolute_exptime() -> None:
    """memcached's expiry rules: 0 never, negative past, <=30 days relative, else absolute."""
    now = 1_800_000_000
    assert absolute_exptime(0, now) == 0
    assert absolute_exptime(-1, now) < now
    assert absolute_exptime(10, now) == now + 10
    assert absolute_exptime(60 * 60 * 24 * 30, now) == now + 60 * 60 * 24 * 30
    assert absolute_exptime(60 * 60 * 24 * 30 + 1, now) == 60 * 60 * 24 * 30 + 1


def test_set_get_binary_and_empty(store: BaseStore) -> None:
    """Values of any bytes, empty included, read back exactly with their flags."""
    value = bytes(range(256)) * 10
    assert put(store, b"k", value, flags=42).outcome is Outcome.STORED
    assert put(store, b"empty", b"").outcome is Outcome.STORED
    rec = store.get(b"k")
    assert rec is not None and rec.value == value and rec.flags == 42
    empty = store.get(b"empty")
    assert empty is not None and empty.value == b""
    assert store.get(b"missing") is None


def test_cas_uniques_grow(store: BaseStore) -> None:
    """Every write gets a larger CAS than the one before, starting from 1."""
    cas = [put(store, b"k%d" % i, b"v").record.cas  # type: ignore[union-attr]
           for i in range(3)]
    assert cas == [1, 2, 3]
    rec = store.get(b"k0")
    assert rec is not None and rec.cas == 1


def test_add_replace_append_prepend(store: BaseStore) -> None:
    """add only when absent, replace/append/prepend only when present; append keeps flags."""
    assert store.execute(StoreOp(b"replace", b"k", b"x")).outcome is Outcome.NOT_STORED
    assert store.execute(StoreOp(b"append", b"k", b"x")).outcome is Outcome.NOT_STORED
    assert store.execute(StoreOp(b"add", b"k", b"mid", 5)).outcome is Outcome.STORED
    assert store.execute(StoreOp(b"add", b"k", b"again")).outcome is Outcome.NOT_STORED
    assert store.execute(StoreOp(b"append", b"k", b">", 9)).outcome is Outcome.STORED
    assert store.execute(StoreOp(b"prepend", b"k", b"<", 9)).outcome is Outcome.STORED
    rec = store.get(b"k")
    assert rec is not None and rec.value == b"<mid>" and rec.flags == 5
    assert store.execute(StoreOp(b"replace", b"k", b"new", 1)).outcome is Outcome.STORED
    assert store.get(b"k").value == b"new"  # type: ignore[union-attr]


def test_append_beyond_max_item_size(make: Callable[..., BaseStore]) -> None:
    """An append that would exceed the item size limit is refused and changes nothing."""
    s = make(max_item_size=1024)
    put(s, b"k", b"x" * 1000)
    assert s.execute(StoreOp(b"append", b"k", b"y" * 25)).outcome is Outcome.TOO_LARGE
    assert s.get(b"k").value == b"x" * 1000  # type: ignore[union-attr]


def test_cas_semantics(store: BaseStore) -> None:
    """cas stores on a matching unique, EXISTS on a stale one, NOT_FOUND when absent."""
    assert store.execute(StoreOp(b"set", b"k", b"v", compare_cas=1)).outcome is (
        Outcome.NOT_FOUND)
    cas = put(store, b"k", b"v1").record.cas  # type: ignore[union-attr]
    assert store.execute(StoreOp(b"set", b"k", b"v2", compare_cas=cas + 100)).outcome is (
        Outcome.EXISTS)
    assert store.execute(StoreOp(b"set", b"k", b"v2", compare_cas=cas)).outcome is (
        Outcome.STORED)
    assert store.get(b"k").value == b"v2"  # type: ignore[union-attr]


def test_invalidate_and_win_token(store: BaseStore) -> None:
    """md I marks stale; the first mg gets W, the next Z; a set clears staleness."""
    put(store, b"k", b"v")
    assert store.execute(DeleteOp(b"k", invalidate=True)).outcome is Outcome.DELETED
    rec = store.get(b"k")
    assert rec is not None and rec.stale and not rec.win_sent
    assert store.execute(MetaGetOp(b"k")).win == b"W"
    assert store.execute(MetaGetOp(b"k")).win == b"Z"
    put(store, b"k", b"fresh")
    rec = store.get(b"k")
    assert rec is not None and not rec.stale and not rec.win_sent


def test_stale_store_with_older_cas(store: BaseStore) -> None:
    """ms I with an older CAS stores the value, but marked stale."""
    cas = put(store, b"k", b"v").record.cas  # type: ignore[union-attr]
    res = store.execute(StoreOp(b"set", b"k", b"old", compare_cas=cas - 1, invalidate=True))
    assert res.outcome is Outcome.STORED and res.record is not None and res.record.stale


def test_vivify_on_miss(store: BaseStore, clock: FakeClock) -> None:
    """mg N creates an empty item with the given TTL and hands out one W."""
    res = store.execute(MetaGetOp(b"v", vivify=30))
    assert res.win == b"W" and res.record is not None and res.record.value == b""
    assert res.record.exptime == int(clock.now) + 30
    assert store.execute(MetaGetOp(b"v", vivify=30)).win == b"Z"


def test_explicit_cas(store: BaseStore) -> None:
    """ms E sets the CAS unique to the given value."""
    res = store.execute(StoreOp(b"set", b"k", b"v", explicit_cas=12345))
    assert res.record is not None and res.record.cas == 12345
    assert store.get(b"k").cas == 12345  # type: ignore[union-attr]


def test_delete_and_compare(store: BaseStore) -> None:
    """delete removes; with a wrong CAS it refuses; a second delete finds nothing."""
    cas = put(store, b"k", b"v").record.cas  # type: ignore[union-attr]
    assert store.execute(DeleteOp(b"k", compare_cas=cas + 1)).outcome is Outcome.EXISTS
    assert store.execute(DeleteOp(b"k")).outcome is Outcome.DELETED
    assert store.execute(DeleteOp(b"k")).outcome is Outcome.NOT_FOUND
    assert store.get(b"k") is None


@pytest.mark.parametrize(("value", "op", "expected_number", "expected_value"), [
    (b"10", ArithOp(b"k", 5), 15, b"15"),
    (b"99", ArithOp(b"k", 1), 100, b"100"),
    (b"100", ArithOp(b"k", 1, incr=False), 99, b"99 "),
    (b"10", ArithOp(b"k", 100, incr=False), 0, b"0 "),
    (b"18446744073709551615", ArithOp(b"k", 1), 0, b"0" + b" " * 19),
    (b" 12", ArithOp(b"k", 1), 13, b"13 "),
    (b"12 ", ArithOp(b"k", 1), 13, b"13 "),
])
def test_incr_decr(store: BaseStore, value: bytes, op: ArithOp, expected_number: int,
                   expected_value: bytes) -> None:
    """incr wraps at 2**64, decr stops at 0, shorter results are space-padded (memcached)."""
    put(store, b"k", value)
    res = store.execute(op)
    assert res.outcome is Outcome.OK and res.number == expected_number
    assert store.get(b"k").value == expected_value  # type: ignore[union-attr]


def test_incr_refusals_and_vivify(store: BaseStore) -> None:
    """incr on a missing key is NOT_FOUND (or vivifies with N), on text NON_NUMERIC."""
    assert store.execute(ArithOp(b"n", 1)).outcome is Outcome.NOT_FOUND
    put(store, b"t", b"ab")
    assert store.execute(ArithOp(b"t", 1)).outcome is Outcome.NON_NUMERIC
    res = store.execute(ArithOp(b"n", 1, vivify=0, initial=13))
    assert res.number == 13 and store.get(b"n").value == b"13"  # type: ignore[union-attr]


def test_expiry_relative_absolute_negative(store: BaseStore, clock: FakeClock) -> None:
    """Items vanish at their expiry time; negative exptime is expired at once."""
    put(store, b"rel", b"v", exptime=10)
    put(store, b"abs", b"v", exptime=int(clock.now) + 20)
    put(store, b"neg", b"v", exptime=-1)
    put(store, b"never", b"v")
    assert store.get(b"neg") is None
    clock.now += 10
    assert store.get(b"rel") is None and store.get(b"abs") is not None
    clock.now += 10
    assert store.get(b"abs") is None and store.get(b"never") is not None


def test_expired_items_are_removed_lazily(store: BaseStore, clock: FakeClock) -> None:
    """Reading an expired item removes it from the store (item count drops)."""
    put(store, b"k", b"v", exptime=5)
    assert store.info()["curr_items"] == 1
    clock.now += 6
    assert store.get(b"k") is None
    assert store.info()["curr_items"] == 0
    assert store.counters["reclaimed"] == 1


def test_expire_op_spares_a_rewritten_item(store: BaseStore, clock: FakeClock) -> None:
    """A lazy removal does not delete an item rewritten since it was seen expired."""
    old = put(store, b"k", b"v", exptime=5).record
    assert old is not None
    put(store, b"k", b"new")
    clock.now += 6
    assert store.execute(ExpireOp(b"k", old.cas)).outcome is Outcome.NOT_STORED
    assert store.get(b"k") is not None


def test_touch(store: BaseStore, clock: FakeClock) -> None:
    """touch sets a new expiry and keeps the CAS; gat touches several keys at once."""
    cas = put(store, b"a", b"v", exptime=5).record.cas  # type: ignore[union-attr]
    put(store, b"b", b"w")
    res = store.execute(TouchOp((b"a", b"b", b"c"), 100))
    assert res.outcome is Outcome.TOUCHED
    assert [r.value if r else None for r in res.records] == [b"v", b"w", None]
    clock.now += 50
    rec = store.get(b"a")
    assert rec is not None and rec.cas == cas
    assert store.execute(TouchOp((b"zz",), 5)).outcome is Outcome.NOT_FOUND


def test_flush_now_and_delayed(store: BaseStore, clock: FakeClock) -> None:
    """flush_all empties the store; with a delay, items written before it go at that time."""
    put(store, b"a", b"v")
    store.execute(FlushOp())
    assert store.get(b"a") is None and store.info()["curr_items"] == 0
    assert store.info()["bytes"] == 0
    put(store, b"b", b"v")
    store.execute(FlushOp(10))
    assert store.get(b"b") is not None
    clock.now += 11
    assert store.get(b"b") is None
    put(store, b"c", b"v")
    assert store.get(b"c") is not None


def test_used_bytes_tracks_writes(store: BaseStore) -> None:
    """The byte count follows sets, overwrites and deletes exactly."""
    put(store, b"k", b"x" * 100)
    assert store.info()["bytes"] == 1 + HEADER_SIZE + 100
    put(store, b"k", b"x" * 10)
    put(store, b"j", b"y")
    assert store.info()["bytes"] == (1 + HEADER_SIZE + 10) + (1 + HEADER_SIZE + 1)
    store.execute(DeleteOp(b"k"))
    store.execute(DeleteOp(b"j"))
    assert store.info()["bytes"] == 0
    assert store.info()["curr_items"] == 0


def test_scan_lists_live_items_in_order(store: BaseStore, clock: FakeClock) -> None:
    """scan pages through live records in key order with their sizes."""
    for i in range(25):
        put(store, b"k%02d" % i, b"v" * i)
    put(store, b"dead", b"v", exptime=1)
    clock.now += 2
    got = []
    after = b""
    while batch := store.scan(after, limit=10):
        got += batch
        after = batch[-1][0].key
    assert [r.key for r, _ in got] == [b"k%02d" % i for i in range(25)]
    assert [size for _, size in got] == [3 + HEADER_SIZE + i for i in range(25)]


def test_reap_removes_expired_and_resumes(store: BaseStore, clock: FakeClock) -> None:
    """The sweep deletes expired items in bounded steps and hands back where to resume."""
    for i in range(30):
        put(store, b"k%02d" % i, b"v", exptime=5 if i % 2 else 0)
    clock.now += 10
    res = store.execute(ReapOp(b"", 20))
    assert res.number == 10 and res.record is not None and res.record.key
    res = store.execute(ReapOp(res.record.key, 20))
    assert res.number == 5 and res.record is not None and res.record.key == b""
    assert store.info()["curr_items"] == 15


def test_add_and_replace_treat_a_dead_item_as_absent(store: BaseStore,
                                                     clock: FakeClock) -> None:
    """add stores over an expired item and replace refuses it, as if it were gone."""
    put(store, b"a", b"old", exptime=5)
    put(store, b"r", b"old", exptime=5)
    clock.now += 6
    assert store.execute(StoreOp(b"add", b"a", b"new")).outcome is Outcome.STORED
    assert store.execute(StoreOp(b"replace", b"r", b"new")).outcome is Outcome.NOT_STORED
    assert store.get(b"a").value == b"new"  # type: ignore[union-attr]
    assert store.get(b"r") is None


def test_get_many_and_get_value_agree(store: BaseStore, clock: FakeClock) -> None:
    """The plain-get fast path and the multi-key read return the same live items."""
    put(store, b"a", b"alpha", flags=3)
    put(store, b"b", b"beta", exptime=5)
    clock.now += 6
    a, b, c = store.get_many((b"a", b"b", b"c"))
    assert a is not None and (a.flags, a.cas, a.value) == store.get_value(b"a")
    assert b is None and c is None
    assert store.get_value(b"b") is None and store.get_value(b"c") is None


class _WriteThenBoom(WriteOp):
    """An op that writes, then fails inside the transaction, like a bug in an op would."""

    __slots__ = ()

    def apply(self, tx: Txn) -> Result:
        tx.put(b"half", b"written", 0, 0)
        raise RuntimeError("boom")


def test_a_failing_op_fails_alone_and_leaves_nothing(store: BaseStore) -> None:
    """An op raising inside a batch gets FAILED and its writes are rolled back; the other
    ops of the batch still commit."""
    results = store.apply_batch([StoreOp(b"set", b"a", b"1"), _WriteThenBoom(),
                                 StoreOp(b"set", b"b", b"2")])
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.FAILED, Outcome.STORED]
    assert store.get(b"a") is not None and store.get(b"b") is not None
    assert store.get(b"half") is None
    assert store.info()["curr_items"] == 2


def test_write_without_committer_fires_once_durable(store: BaseStore) -> None:
    """write() with no committer applies the op at once and returns a fired Deferred."""
    results: list[Result] = []
    store.write(StoreOp(b"set", b"k", b"v")).addCallback(results.append)
    assert [r.outcome for r in results] == [Outcome.STORED]
    assert store.get(b"k") is not None


class _Refusing:
    """A committer that refuses every op, as one does once it was stopped."""

    def enqueue(self, op: WriteOp, done: Callback) -> None:
        raise StorageError("refused")

    def stop(self) -> None:
        pass


def test_write_refusal_fails_the_deferred(store: BaseStore) -> None:
    """A refused write fails through its Deferred; submit() logs it and does not raise;
    enqueue() (the handler's Deferred-free writes) answers it as a FAILED result."""
    store.use_committer(_Refusing())
    failures: list[str] = []
    store.write(StoreOp(b"set", b"k", b"v")).addErrback(
        lambda f: failures.append(f.getErrorMessage()))
    assert failures == ["refused"]
    store.submit(StoreOp(b"set", b"k", b"v"))  # must not raise
    results: list[Result] = []
    store.enqueue(StoreOp(b"set", b"k", b"v"), results.append)  # must not raise either
    assert [r.outcome for r in results] == [Outcome.FAILED]
    store.use_committer(None)
    assert store.get(b"k") is None
