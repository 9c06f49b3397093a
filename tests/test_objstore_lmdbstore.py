"""The LMDB backend: what only a disk store has (persistence, data written by earlier
versions, corruption on disk, a full map, processes sharing an environment, fsync cost).
Every test uses a real LMDB environment in tmp_path; the item semantics it shares with the
memory backend are in test_objstore_items.py."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from objstore.items import DeleteOp, ExpireOp, Outcome, QuarantineOp, ReapOp, Result, StoreOp
from objstore.lmdbstore import LmdbStore
from objstore.record import HEADER_SIZE
from tests.objstore_harness import MIB, FakeClock

#: An environment as the original ``objstore/storage.py`` left it (captured from it before
#: the split) after, at t=1_800_000_000: set a=alpha (flags 5), set b=beta (flags 6,
#: exptime 100), md a I (stale), flush_all 200.  Database -> key -> stored bytes in hex.
OLD_ENVIRONMENT = {
    b"items": {
        b"a": "01010000050000000000000000000000030000000000000000d2496bdb6dc6f9616c706861",
        b"b": "010000000600000064d2496b00000000020000000000000000d2496bb6841c8362657461",
    },
    b"meta": {
        b"cas": "0300000000000000",
        b"oldest_live": "c8d2496b00000000",
        b"used_bytes": "4b00000000000000",
    },
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    yield s
    s.close()


def put(store: LmdbStore, key: bytes, value: bytes, **kw: object) -> Result:
    return store.execute(StoreOp(b"set", key, value, **kw))  # type: ignore[arg-type]


def test_environment_of_the_first_version_reads_the_same(tmp_path: Path,
                                                         clock: FakeClock) -> None:
    """Items, CAS counter, byte count and flush cut-off written by the original store are
    read as they were written, and new writes continue from them."""
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4, map_size=16 * MIB)
    with env.begin(write=True) as txn:
        for name, entries in OLD_ENVIRONMENT.items():
            db = env.open_db(name, txn=txn)
            for key, stored in entries.items():
                txn.put(key, bytes.fromhex(stored), db=db)
        env.open_db(b"quarantine", txn=txn)
    env.close()
    store = LmdbStore(tmp_path / "db", map_size=16 * MIB, max_item_size=MIB, clock=clock)
    a, b = store.get(b"a"), store.get(b"b")
    assert a is not None and (a.value, a.flags, a.exptime, a.cas, a.stale) == (
        b"alpha", 5, 0, 3, True)
    assert b is not None and (b.value, b.flags, b.exptime, b.cas) == (
        b"beta", 6, 1_800_000_100, 2)
    assert store.info()["bytes"] == 0x4B and store.info()["curr_items"] == 2
    assert put(store, b"c", b"x").record.cas == 4  # type: ignore[union-attr]
    clock.now += 201  # past the flush_all cut-off: everything written before it is gone
    assert store.get_many((b"a", b"b", b"c")) == [None, None, None]
    store.close()


def test_cas_counter_persists(tmp_path: Path, clock: FakeClock) -> None:
    """The CAS counter survives a reopen: no unique is handed out twice."""
    s = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    cas = [put(s, b"k%d" % i, b"v").record.cas for i in range(3)]  # type: ignore[union-attr]
    s.close()
    s = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    assert put(s, b"x", b"v").record.cas > cas[-1]  # type: ignore[union-attr]
    rec = s.get(b"k0")
    assert rec is not None and rec.cas == cas[0]
    s.close()


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
    store = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
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


def test_write_op_meeting_corruption_quarantines_it(tmp_path: Path, clock: FakeClock) -> None:
    """An op that reads a corrupt record (append, delete) treats it as absent and moves it
    to quarantine; expiry and the sweep leave it alone."""
    store = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    marker = b"DAMAGED-VALUE-" * 8
    put(store, b"victim", marker, exptime=5)
    _flip_value_byte_on_disk(tmp_path / "db", marker)
    victim_cas = 1
    clock.now += 10
    assert store.execute(ExpireOp(b"victim", victim_cas)).outcome is Outcome.NOT_FOUND
    res = store.execute(ReapOp())
    assert res.number == 0 and store.info()["curr_items"] == 1
    assert store.execute(QuarantineOp(b"other")).outcome is Outcome.NOT_FOUND
    assert store.execute(DeleteOp(b"victim")).outcome is Outcome.NOT_FOUND
    assert store.counters["corrupt_reads"] == 1
    assert store.info()["quarantined_items"] == 1 and store.info()["curr_items"] == 0
    assert store.info()["bytes"] == 0
    store.close()


def test_map_full_fails_only_what_does_not_fit(tmp_path: Path, clock: FakeClock) -> None:
    """When the LMDB map is full, the write fails with NO_SPACE and earlier data stays."""
    store = LmdbStore(tmp_path / "db", map_size=16 * MIB, max_item_size=MIB, clock=clock)
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
    a = LmdbStore(tmp_path / "db", map_size=64 * MIB, max_item_size=MIB, clock=clock)
    ours = {put(a, b"a%d" % i, b"v").record.cas for i in range(10)}  # type: ignore[union-attr]
    script = (
        "import sys\n"
        "from objstore.items import StoreOp\n"
        "from objstore.lmdbstore import LmdbStore\n"
        "s = LmdbStore(sys.argv[1], map_size=64 * 2**20, max_item_size=2**20)\n"
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


def test_used_bytes_match_the_stored_records(store: LmdbStore) -> None:
    """The byte count is key plus stored record, the same figure scan reports per item."""
    put(store, b"key", b"v" * 50)
    [(rec, size)] = store.scan()
    assert rec.key == b"key" and size == 3 + HEADER_SIZE + 50
    assert store.info()["bytes"] == size


def test_durable_write_is_fast_enough(store: LmdbStore) -> None:
    """A batch of 200 writes commits in one fsync'd transaction well under a second."""
    start = time.perf_counter()
    results = store.apply_batch([StoreOp(b"set", b"k%d" % i, b"x" * 4096) for i in range(200)])
    assert all(r.outcome is Outcome.STORED for r in results)
    assert time.perf_counter() - start < 1.0
