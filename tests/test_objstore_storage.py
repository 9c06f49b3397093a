"""The LMDB store: record format, memcached semantics of each write, expiry, corruption,
group commit.  Every test uses a real LMDB environment in tmp_path."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from objstore.storage import (
    BIT_STALE,
    HEADER_SIZE,
    ArithOp,
    CorruptRecord,
    DeleteOp,
    ExpireOp,
    FlushOp,
    MetaGetOp,
    Outcome,
    ReapOp,
    Result,
    Storage,
    StoreOp,
    TouchOp,
    absolute_exptime,
    decode_record,
    encode_record,
)

MIB = 1024 * 1024


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Storage]:
    s = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    yield s
    s.close()


def put(store: Storage, key: bytes, value: bytes, **kw: object) -> Result:
    return store.execute(StoreOp(b"set", key, value, **kw))  # type: ignore[arg-type]


def test_record_round_trip_and_checksum() -> None:
    """A record decodes to what was encoded; any flipped byte is detected."""
    raw = encode_record(b"key", b"value", 7, 123, 9, 100, BIT_STALE)
    assert len(raw) == HEADER_SIZE + 5
    rec = decode_record(b"key", raw)
    assert (rec.value, rec.flags, rec.exptime, rec.cas, rec.mtime, rec.stale) == (
        b"value", 7, 123, 9, 100, True)
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(CorruptRecord):
            decode_record(b"key", bytes(bad))
    with pytest.raises(CorruptRecord):
        decode_record(b"other", raw)  # the key is covered too
    with pytest.raises(CorruptRecord):
        decode_record(b"key", raw[:10])


def test_absolute_exptime() -> None:
    """memcached's expiry rules: 0 never, negative past, <=30 days relative, else absolute."""
    now = 1_800_000_000
    assert absolute_exptime(0, now) == 0
    assert absolute_exptime(-1, now) < now
    assert absolute_exptime(10, now) == now + 10
    assert absolute_exptime(60 * 60 * 24 * 30, now) == now + 60 * 60 * 24 * 30
    assert absolute_exptime(60 * 60 * 24 * 30 + 1, now) == 60 * 60 * 24 * 30 + 1


def test_set_get_binary_and_empty(store: Storage) -> None:
    """Values of any bytes, empty included, read back exactly with their flags."""
    value = bytes(range(256)) * 10
    assert put(store, b"k", value, flags=42).outcome is Outcome.STORED
    assert put(store, b"empty", b"").outcome is Outcome.STORED
    rec = store.get(b"k")
    assert rec is not None and rec.value == value and rec.flags == 42
    empty = store.get(b"empty")
    assert empty is not None and empty.value == b""
    assert store.get(b"missing") is None


def test_cas_uniques_grow_and_persist(tmp_path: Path, clock: FakeClock) -> None:
    """Every write gets a larger CAS, and the counter survives a reopen."""
    s = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    cas = [put(s, b"k%d" % i, b"v").record.cas for i in range(3)]  # type: ignore[union-attr]
    assert cas == sorted(cas) and len(set(cas)) == 3
    s.close()
    s = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    assert put(s, b"x", b"v").record.cas > cas[-1]  # type: ignore[union-attr]
    rec = s.get(b"k0")
    assert rec is not None and rec.cas == cas[0]
    s.close()


def test_add_replace_append_prepend(store: Storage) -> None:
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


def test_append_beyond_max_item_size(tmp_path: Path, clock: FakeClock) -> None:
    """An append that would exceed the item size limit is refused and changes nothing."""
    s = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=1024, clock=clock)
    put(s, b"k", b"x" * 1000)
    assert s.execute(StoreOp(b"append", b"k", b"y" * 25)).outcome is Outcome.TOO_LARGE
    assert s.get(b"k").value == b"x" * 1000  # type: ignore[union-attr]
    s.close()


def test_cas_semantics(store: Storage) -> None:
    """cas stores on a matching unique, EXISTS on a stale one, NOT_FOUND when absent."""
    assert store.execute(StoreOp(b"set", b"k", b"v", compare_cas=1)).outcome is (
        Outcome.NOT_FOUND)
    cas = put(store, b"k", b"v1").record.cas  # type: ignore[union-attr]
    assert store.execute(StoreOp(b"set", b"k", b"v2", compare_cas=cas + 100)).outcome is (
        Outcome.EXISTS)
    assert store.execute(StoreOp(b"set", b"k", b"v2", compare_cas=cas)).outcome is (
        Outcome.STORED)
    assert store.get(b"k").value == b"v2"  # type: ignore[union-attr]


def test_invalidate_and_win_token(store: Storage) -> None:
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


def test_stale_store_with_older_cas(store: Storage) -> None:
    """ms I with an older CAS stores the value, but marked stale."""
    cas = put(store, b"k", b"v").record.cas  # type: ignore[union-attr]
    res = store.execute(StoreOp(b"set", b"k", b"old", compare_cas=cas - 1, invalidate=True))
    assert res.outcome is Outcome.STORED and res.record is not None and res.record.stale


def test_vivify_on_miss(store: Storage, clock: FakeClock) -> None:
    """mg N creates an empty item with the given TTL and hands out one W."""
    res = store.execute(MetaGetOp(b"v", vivify=30))
    assert res.win == b"W" and res.record is not None and res.record.value == b""
    assert res.record.exptime == int(clock.now) + 30
    assert store.execute(MetaGetOp(b"v", vivify=30)).win == b"Z"


def test_explicit_cas(store: Storage) -> None:
    """ms E sets the CAS unique to the given value."""
    res = store.execute(StoreOp(b"set", b"k", b"v", explicit_cas=12345))
    assert res.record is not None and res.record.cas == 12345
    assert store.get(b"k").cas == 12345  # type: ignore[union-attr]


def test_delete_and_compare(store: Storage) -> None:
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
def test_incr_decr(store: Storage, value: bytes, op: ArithOp, expected_number: int,
                   expected_value: bytes) -> None:
    """incr wraps at 2**64, decr stops at 0, shorter results are space-padded (memcached)."""
    put(store, b"k", value)
    res = store.execute(op)
    assert res.outcome is Outcome.OK and res.number == expected_number
    assert store.get(b"k").value == expected_value  # type: ignore[union-attr]


def test_incr_refusals_and_vivify(store: Storage) -> None:
    """incr on a missing key is NOT_FOUND (or vivifies with N), on text NON_NUMERIC."""
    assert store.execute(ArithOp(b"n", 1)).outcome is Outcome.NOT_FOUND
    put(store, b"t", b"ab")
    assert store.execute(ArithOp(b"t", 1)).outcome is Outcome.NON_NUMERIC
    res = store.execute(ArithOp(b"n", 1, vivify=0, initial=13))
    assert res.number == 13 and store.get(b"n").value == b"13"  # type: ignore[union-attr]


def test_expiry_relative_absolute_negative(store: Storage, clock: FakeClock) -> None:
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


def test_expired_items_are_removed_lazily(store: Storage, clock: FakeClock) -> None:
    """Reading an expired item removes it from the store (item count drops)."""
    put(store, b"k", b"v", exptime=5)
    assert store.info()["curr_items"] == 1
    clock.now += 6
    assert store.get(b"k") is None
    assert store.info()["curr_items"] == 0
    assert store.counters["reclaimed"] == 1


def test_expire_op_spares_a_rewritten_item(store: Storage, clock: FakeClock) -> None:
    """A lazy removal does not delete an item rewritten since it was seen expired."""
    old = put(store, b"k", b"v", exptime=5).record
    assert old is not None
    put(store, b"k", b"new")
    clock.now += 6
    assert store.execute(ExpireOp(b"k", old.cas)).outcome is Outcome.NOT_STORED
    assert store.get(b"k") is not None


def test_touch(store: Storage, clock: FakeClock) -> None:
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


def test_flush_now_and_delayed(store: Storage, clock: FakeClock) -> None:
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


def test_used_bytes_tracks_writes(store: Storage) -> None:
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


def test_scan_lists_live_items_in_order(store: Storage, clock: FakeClock) -> None:
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


def test_reap_removes_expired_and_resumes(store: Storage, clock: FakeClock) -> None:
    """The sweep deletes expired items in bounded steps and hands back where to resume."""
    for i in range(30):
        put(store, b"k%02d" % i, b"v", exptime=5 if i % 2 else 0)
    clock.now += 10
    res = store.execute(ReapOp(b"", 20))
    assert res.number == 10 and res.record is not None and res.record.key
    res = store.execute(ReapOp(res.record.key, 20))
    assert res.number == 5 and res.record is not None and res.record.key == b""
    assert store.info()["curr_items"] == 15


def _flip_value_byte_on_disk(db_dir: Path, marker: bytes) -> None:
    """Flip one byte in the middle of every copy of ``marker`` in data.mdb (copy-on-write
    leaves stale copies of small records in freed pages; the live one is among them)."""
    path = db_dir / "data.mdb"
    data = path.read_bytes()
    at = data.find(marker)
    assert at >= 0, "value not found in the LMDB file"
    with open(path, "r+b") as f:
        while at >= 0:
            f.seek(at + len(marker) // 2)
            f.write(bytes((data[at + len(marker) // 2] ^ 0x20,)))
            at = data.find(marker, at + 1)


@pytest.mark.parametrize("size", [100, 64 * 1024])
def test_corruption_on_disk_is_refused_counted_quarantined(tmp_path: Path, clock: FakeClock,
                                                           size: int) -> None:
    """A byte flipped in the LMDB file makes the read a miss, counted and quarantined;
    other keys are unaffected."""
    store = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    marker = (b"CORRUPT-ME-" * (size // 11 + 1))[:size]
    put(store, b"victim", marker)
    for i in range(20):
        put(store, b"other%d" % i, b"fine-%d" % i * 10)
    _flip_value_byte_on_disk(tmp_path / "db", marker)
    assert store.get(b"victim") is None
    assert store.counters["corrupt_reads"] == 1
    for i in range(20):
        assert store.get(b"other%d" % i).value == b"fine-%d" % i * 10  # type: ignore[union-attr]
    # The corrupt record left the item table: it is neither served nor listed.
    assert store.info()["quarantined_items"] == 1
    assert b"victim" not in [r.key for r, _ in store.scan()]
    assert store.get(b"victim") is None
    store.close()


def test_group_commit_batches_concurrent_writes(store: Storage) -> None:
    """Writes submitted together are committed in few transactions, each acknowledged once
    durable, in submission order."""
    delivered: list[tuple[int, Result]] = []
    done = threading.Event()

    def deliver(batch: list[tuple[Callable[[Result], None], Result]]) -> None:
        for cb, res in batch:
            cb(res)

    committer = store.start(deliver, group_commit_max=64)
    n = 500
    for i in range(n):
        def cb(res: Result, i: int = i) -> None:
            delivered.append((i, res))
            if len(delivered) == n:
                done.set()
        store.submit(StoreOp(b"set", b"k%d" % i, b"v%d" % i), cb)
    assert done.wait(30)
    assert [i for i, _ in delivered] == list(range(n))
    assert all(res.outcome is Outcome.STORED for _, res in delivered)
    assert committer.batches < n / 4
    assert committer.largest_batch <= 64
    store.close_committer()
    assert store.get(b"k499").value == b"v499"  # type: ignore[union-attr]


def test_map_full_fails_only_what_does_not_fit(tmp_path: Path, clock: FakeClock) -> None:
    """When the LMDB map is full, the write fails with NO_SPACE and earlier data stays."""
    store = Storage(tmp_path / "db", map_size=16 * MIB, max_item_size=MIB, clock=clock)
    results = store.apply_batch([StoreOp(b"set", b"k%d" % i, b"x" * 900_000)
                                 for i in range(30)])
    outcomes = {r.outcome for r in results}
    assert Outcome.NO_SPACE in outcomes and Outcome.STORED in outcomes
    stored = [i for i, r in enumerate(results) if r.outcome is Outcome.STORED]
    for i in stored:
        assert store.get(b"k%d" % i) is not None
    store.close()


@pytest.mark.system
def test_two_processes_share_one_environment(tmp_path: Path, clock: FakeClock) -> None:
    """Another process on the same directory (as a second worker) sees our writes, and its
    writes never reuse one of our CAS uniques."""
    a = Storage(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    ours = {put(a, b"a%d" % i, b"v").record.cas for i in range(10)}  # type: ignore[union-attr]
    script = (
        "import sys\n"
        "from objstore.storage import Storage, StoreOp\n"
        "s = Storage(sys.argv[1], map_size=64 * 2**20, max_item_size=2**20)\n"
        "assert s.get(b'a3').value == b'v'\n"
        "print(','.join(str(s.execute(StoreOp(b'set', b'b%d' % i, b'w')).record.cas)"
        " for i in range(10)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "db")], check=True,
                         capture_output=True, cwd=Path(__file__).resolve().parents[1])
    theirs = {int(c) for c in out.stdout.decode().strip().split(",")}
    assert len(theirs) == 10 and not ours & theirs
    assert a.get(b"b7") is not None
    assert put(a, b"z", b"v").record.cas > max(theirs)  # type: ignore[union-attr]
    a.close()


def test_durable_write_is_fast_enough(store: Storage) -> None:
    """A batch of 200 writes commits in one fsync'd transaction well under a second."""
    start = time.perf_counter()
    results = store.apply_batch([StoreOp(b"set", b"k%d" % i, b"x" * 4096) for i in range(200)])
    assert all(r.outcome is Outcome.STORED for r in results)
    assert time.perf_counter() - start < 1.0
