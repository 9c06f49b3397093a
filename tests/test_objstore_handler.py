"""Command semantics, bytes in and bytes out, over both store backends (LMDB and memory):
memcached's replies for each command, the meta commands' flags, stats, and the refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from objstore.groupcommit import GroupCommitter
from objstore.handler import VERSION
from tests.objstore_harness import BACKENDS, Harness, exchange


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def h(tmp_path: Path, backend: str) -> Iterator[Harness]:
    harness = Harness(tmp_path, backend, max_item_size=4096)
    yield harness
    harness.close()


def run(h: Harness, *requests: bytes) -> list[bytes]:
    proto, tr = h.connect()
    return [exchange(proto, tr, r) for r in requests]


# (requests in order, expected replies) on a fresh store at t=1_800_000_000; CAS from 1.
SCRIPTS: list[tuple[list[bytes], list[bytes]]] = [
    ([b"get a\r\n"], [b"END\r\n"]),
    ([b"set a 5 0 2\r\nhi\r\n", b"get a b\r\n", b"gets a\r\n"],
     [b"STORED\r\n", b"VALUE a 5 2\r\nhi\r\nEND\r\n", b"VALUE a 5 2 1\r\nhi\r\nEND\r\n"]),
    ([b"add a 0 0 1\r\nx\r\n", b"add a 0 0 1\r\ny\r\n", b"replace b 0 0 1\r\nz\r\n"],
     [b"STORED\r\n", b"NOT_STORED\r\n", b"NOT_STORED\r\n"]),
    ([b"set a 0 0 1\r\nb\r\n", b"append a 0 0 1\r\nc\r\n", b"prepend a 0 0 1\r\na\r\n",
      b"get a\r\n", b"append zz 0 0 1\r\nx\r\n"],
     [b"STORED\r\n"] * 3 + [b"VALUE a 0 3\r\nabc\r\nEND\r\n", b"NOT_STORED\r\n"]),
    ([b"cas a 0 0 1 1\r\nx\r\n", b"set a 0 0 1\r\nx\r\n", b"cas a 0 0 1 9\r\ny\r\n",
      b"cas a 0 0 1 1\r\nz\r\n", b"gets a\r\n"],
     [b"NOT_FOUND\r\n", b"STORED\r\n", b"EXISTS\r\n", b"STORED\r\n",
      b"VALUE a 0 1 2\r\nz\r\nEND\r\n"]),
    ([b"delete a\r\n", b"set a 0 0 1\r\nx\r\n", b"delete a\r\n", b"get a\r\n"],
     [b"NOT_FOUND\r\n", b"STORED\r\n", b"DELETED\r\n", b"END\r\n"]),
    ([b"incr n 1\r\n", b"set n 0 0 2\r\n10\r\n", b"incr n 5\r\n", b"decr n 100\r\n",
      b"get n\r\n", b"set t 0 0 1\r\nx\r\n", b"incr t 1\r\n"],
     [b"NOT_FOUND\r\n", b"STORED\r\n", b"15\r\n", b"0\r\n", b"VALUE n 0 2\r\n0 \r\nEND\r\n",
      b"STORED\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"]),
    ([b"touch a 10\r\n", b"set a 0 0 1\r\nx\r\n", b"touch a 10\r\n", b"gat 100 a b\r\n",
      b"gats 100 a\r\n"],
     [b"NOT_FOUND\r\n", b"STORED\r\n", b"TOUCHED\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n",
      b"VALUE a 0 1 1\r\nx\r\nEND\r\n"]),
    ([b"set a 0 0 1 noreply\r\nx\r\n", b"delete a noreply\r\n", b"incr a 1 noreply\r\n",
      b"touch a 1 noreply\r\n", b"verbosity 1 noreply\r\n", b"get a\r\n"],
     [b"", b"", b"", b"", b"", b"END\r\n"]),
    ([b"version\r\n", b"verbosity 1\r\n"], [b"VERSION " + VERSION + b"\r\n", b"OK\r\n"]),
    ([b"flush_all\r\n", b"flush_all noreply\r\n"],
     [b"CLIENT_ERROR flush_all not allowed\r\n"] * 2),
    ([b"bogus\r\n", b"set a 0 0 1\r\nabc\r\n", b"set a 0 0 1 noreply\r\nabc\r\n"],
     [b"ERROR\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\n", b"ERROR\r\n"]),
    # meta commands
    ([b"mn\r\n", b"mg a v\r\n", b"mg a v q\r\nmn\r\n", b"mg a k O5 v\r\n"],
     [b"MN\r\n", b"EN\r\n", b"MN\r\n", b"EN ka O5\r\n"]),
    ([b"ms a 2 F7 T0\r\nhi\r\n", b"mg a v k f t c s O9\r\n", b"mg a\r\n", b"mg a q k\r\n"],
     [b"HD\r\n", b"VA 2 ka f7 t-1 c1 s2 O9\r\nhi\r\n", b"HD\r\n", b"HD ka\r\n"]),
    ([b"ms a 2 c k b\r\nhi\r\n"], [b"CLIENT_ERROR error decoding key\r\n"]),
    ([b"ms YWJj 2 b k c\r\nhi\r\n", b"mg YWJj b k v\r\n", b"get abc\r\n"],
     [b"HD kYWJj b c1\r\n", b"VA 2 kYWJj b\r\nhi\r\n", b"VALUE abc 0 2\r\nhi\r\nEND\r\n"]),
    ([b"ms a 2 MA\r\nhi\r\n", b"ms a 2 ME\r\nhi\r\n", b"ms a 2 ME\r\nho\r\n",
      b"ms a 1 MA\r\n!\r\n", b"ms a 1 MP\r\n<\r\n", b"ms a 2 MR\r\nxy\r\n",
      b"ms b 2 MR\r\nxy\r\n", b"mg a v\r\n"],
     [b"NS\r\n", b"HD\r\n", b"NS\r\n", b"HD\r\n", b"HD\r\n", b"HD\r\n", b"NS\r\n",
      b"VA 2\r\nxy\r\n"]),
    ([b"ms a 1 q\r\nx\r\nmn\r\n", b"ms a 1 C99 q\r\nx\r\n", b"ms z 1 C5\r\nx\r\n",
      b"ms a 1 C1 c\r\ny\r\n"],
     [b"MN\r\n", b"EX\r\n", b"NF\r\n", b"HD c2\r\n"]),
    ([b"ms a 1 E500\r\nx\r\n", b"mg a c\r\n"], [b"HD\r\n", b"HD c500\r\n"]),
    ([b"md a\r\n", b"md a q\r\nmn\r\n", b"set a 0 0 1\r\nx\r\n", b"md a q\r\nmn\r\n",
      b"get a\r\n"],
     [b"NF\r\n", b"NF\r\nMN\r\n", b"STORED\r\n", b"MN\r\n", b"END\r\n"]),
    ([b"set a 0 0 1\r\nx\r\n", b"md a C9\r\n", b"md a I T30\r\n", b"mg a v c t\r\n",
      b"mg a v c\r\n", b"set a 0 0 1\r\ny\r\n", b"mg a v\r\n"],
     [b"STORED\r\n", b"EX\r\n", b"HD\r\n", b"VA 1 c2 t30 X W\r\nx\r\n",
      b"VA 1 c2 Z X\r\nx\r\n", b"STORED\r\n", b"VA 1\r\ny\r\n"]),
    ([b"mg v N30 v c t\r\n", b"mg v N30 v c t\r\n", b"ms v 2 T0\r\nhi\r\n", b"mg v v\r\n"],
     [b"VA 0 c1 t30 W\r\n\r\n", b"VA 0 c1 t30 Z\r\n\r\n", b"HD\r\n", b"VA 2\r\nhi\r\n"]),
    ([b"ma n\r\n", b"ma n N0 J13 v\r\n", b"ma n v\r\n", b"ma n MD D20 v t c\r\n",
      b"ma n q\r\nmn\r\n", b"ma zz q\r\nmn\r\n", b"set t 0 0 1\r\nx\r\n", b"ma t\r\n"],
     [b"NF\r\n", b"VA 2\r\n13\r\n", b"VA 2\r\n14\r\n", b"VA 1 t-1 c3\r\n0\r\n", b"MN\r\n",
      b"NF\r\nMN\r\n", b"STORED\r\n",
      b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"]),
    ([b"me a\r\n", b"set a 0 100 3\r\nabc\r\n", b"me a\r\n"],
     [b"EN\r\n", b"STORED\r\n", b"ME a exp=100 la=0 cas=1 fetch=no cls=1 size=36\r\n"]),
    ([b"lru_crawler metadump foo\r\n", b"lru_crawler metadump 2\r\n",
      b"set b%c 0 0 1\r\nx\r\n", b"lru_crawler metadump 1\r\n"],
     [b"BADCLASS invalid class id\r\n", b"END\r\n", b"STORED\r\n",
      b"key=b%25c exp=-1 la=1800000000 cas=1 fetch=no cls=1 size=36\nEND\r\n"]),
    ([b"stats nonsense\r\n", b"stats reset\r\n"], [b"ERROR\r\n", b"RESET\r\n"]),
    # A set that did not happen still answers c (c0), as memcached's ms does.
    ([b"ms a 1\r\nx\r\n", b"ms a 1 c C99\r\ny\r\n", b"ms z 1 C5 c k\r\ny\r\n",
      b"ms a 1 ME c\r\ny\r\n", b"md a C99 c\r\n"],
     [b"HD\r\n", b"EX c0\r\n", b"NF c0 kz\r\n", b"NS c0\r\n", b"EX\r\n"]),
    # h: read before since the last write (memcached's fetched bit).
    ([b"ms a 1 T0\r\nx\r\n", b"mg a h\r\n", b"mg a h v\r\n", b"get a\r\n",
      b"set a 0 0 1\r\ny\r\n", b"mg a h\r\n"],
     [b"HD\r\n", b"HD h0\r\n", b"VA 1 h1\r\nx\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n",
      b"STORED\r\n", b"HD h0\r\n"]),
    ([b"stats detail on\r\n", b"stats detail dump\r\n", b"stats detail off\r\n",
      b"stats detail\r\n", b"stats sizes\r\n", b"slabs automove 1\r\n",
      b"slabs automove\r\n", b"slabs reassign 1 2\r\n"],
     [b"OK\r\n", b"END\r\n", b"OK\r\n", b"CLIENT_ERROR usage: stats detail on|off|dump\r\n",
      b"STAT sizes_status disabled\r\nEND\r\n", b"OK\r\n", b"ERROR\r\n",
      b"NOSPARE source class has no spare pages\r\n"]),
]


@pytest.mark.parametrize(("requests", "replies"), SCRIPTS,
                         ids=[repr(s[0][0][:30]) for s in SCRIPTS])
def test_script(h: Harness, requests: list[bytes], replies: list[bytes]) -> None:
    """Each request gets memcached's reply, in order."""
    assert run(h, *requests) == replies


def test_too_large_set_unlinks_old_value(h: Harness) -> None:
    """A set over the item size is refused and, like memcached, removes the old value."""
    big = b"x" * 5000
    assert run(h, b"set a 0 0 1\r\nx\r\n", b"set a 0 0 5000\r\n" + big + b"\r\n",
               b"get a\r\n", b"add a 0 0 5000 noreply\r\n" + big + b"\r\nmn\r\n") == [
        b"STORED\r\n", b"SERVER_ERROR object too large for cache\r\n", b"END\r\n", b"MN\r\n"]
    assert h.counters.store_too_large == 2


def test_append_past_limit_is_out_of_memory(h: Harness) -> None:
    """An append that would pass the item size gets memcached's out-of-memory error."""
    assert run(h, b"set a 0 0 4000\r\n" + b"x" * 4000 + b"\r\n",
               b"append a 0 0 100\r\n" + b"y" * 100 + b"\r\n") == [
        b"STORED\r\n", b"SERVER_ERROR out of memory storing object\r\n"]


def test_expiry_through_the_protocol(h: Harness) -> None:
    """An item set with a TTL is gone once the clock passes it."""
    proto, tr = h.connect()
    assert exchange(proto, tr, b"set a 0 5 1\r\nx\r\n") == b"STORED\r\n"
    h.clock.advance(6)
    assert exchange(proto, tr, b"get a\r\n") == b"END\r\n"


def test_flush_all_when_enabled(tmp_path: Path, backend: str) -> None:
    """flush_all empties the store when the config allows it."""
    h = Harness(tmp_path, backend, flush_all_enabled=True)
    assert run(h, b"set a 0 0 1\r\nx\r\n", b"flush_all\r\n", b"get a\r\n",
               b"flush_all 0 noreply\r\nmn\r\n") == [
        b"STORED\r\n", b"OK\r\n", b"END\r\n", b"MN\r\n"]
    h.close()


def _stats(h: Harness, group: bytes = b"") -> dict[bytes, bytes]:
    out = run(h, b"stats " + group + b"\r\n")[0]
    assert out.endswith(b"END\r\n")
    rows = [line.split(b" ", 2) for line in out.split(b"\r\n")[:-2]]
    assert all(r[0] == b"STAT" for r in rows)
    return {r[1]: r[2] for r in rows}


def test_stats_counts_and_lmdb_figures(h: Harness) -> None:
    """stats reports memcached's counters plus item, byte and LMDB figures."""
    run(h, b"set a 0 0 3\r\nabc\r\n", b"get a\r\n", b"get b\r\n", b"delete b\r\n")
    s = _stats(h)
    for name in (b"pid", b"uptime", b"time", b"version", b"curr_connections",
                 b"total_connections", b"cmd_get", b"cmd_set", b"get_hits", b"get_misses",
                 b"curr_items", b"bytes", b"limit_maxbytes", b"threads", b"lmdb_map_size",
                 b"lmdb_used_pages", b"lmdb_readers", b"corrupt_reads", b"group_commits"):
        assert name in s, name
    assert (s[b"cmd_get"], s[b"get_hits"], s[b"get_misses"]) == (b"2", b"1", b"1")
    assert (s[b"cmd_set"], s[b"curr_items"], s[b"delete_misses"]) == (b"1", b"1", b"1")
    assert s[b"bytes"] == b"36"


def test_stats_lmdb_figures(tmp_path: Path) -> None:
    """On LMDB, stats reports the map size configured and the pages in use."""
    h = Harness(tmp_path, "lmdb")
    run(h, b"set a 0 0 3\r\nabc\r\n")
    s = _stats(h)
    assert int(s[b"lmdb_map_size"]) == h.config.map_size
    assert int(s[b"lmdb_used_pages"]) > 0 and int(s[b"group_commits"]) == 1
    h.close()


def test_stats_settings_items_slabs(h: Harness) -> None:
    """stats settings/items/slabs give plausible values in memcached's layout."""
    run(h, b"set a 0 0 3\r\nabc\r\n")
    settings = _stats(h, b"settings")
    assert settings[b"item_size_max"] == b"4096"
    assert settings[b"flush_enabled"] == b"no"
    assert settings[b"maxconns"] == str(h.config.max_connections).encode()
    items = _stats(h, b"items")
    assert items[b"items:1:number"] == b"1"
    slabs = _stats(h, b"slabs")
    assert slabs[b"1:used_chunks"] == b"1" and slabs[b"active_slabs"] == b"1"


def test_hot_keys_follow_reads(h: Harness) -> None:
    """Reads feed the hot-key tracker; the most read key comes first."""
    proto, tr = h.connect()
    exchange(proto, tr, b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\n")
    exchange(proto, tr, b"get a\r\n" * 5 + b"get b\r\n" + b"mg a v\r\n")
    assert [k for k, _ in h.hot.top(2)] == [b"a", b"b"]


def test_size_probes_are_not_reads(h: Harness) -> None:
    """A meta get without the value (the leveler's size query, a copy's check) counts as a
    hit but does not make the key hot; one with the value does."""
    proto, tr = h.connect()
    exchange(proto, tr, b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\n")
    exchange(proto, tr, b"mg a s f\r\n" * 5 + b"mg b s v\r\n")
    assert [k for k, _ in h.hot.top(2)] == [b"b"]
    assert _stats(h)[b"get_hits"] == b"6"


@pytest.mark.parametrize(("requests", "replies"), [
    ([b"set a 0 0 1\r\nx\r\nget a\r\n", b"set a 0 0 1 noreply\r\nx\r\nmn\r\n"],
     [b"SERVER_ERROR storage failure\r\nEND\r\n", b"MN\r\n"]),
    ([b"delete a\r\n", b"incr a 1\r\n", b"touch a 1\r\n", b"gat 1 a\r\n", b"mg a T1\r\n",
      b"ms a 1\r\nx\r\n", b"md a\r\n", b"ma a\r\n"],
     [b"SERVER_ERROR storage failure\r\n"] * 8),
])
def test_refused_write_answers_server_error(h: Harness, requests: list[bytes],
                                            replies: list[bytes]) -> None:
    """A write the store refuses (its committer stopped during shutdown) is answered
    SERVER_ERROR storage failure (silenced by noreply), in order, for every write command."""
    committer = GroupCommitter(h.storage, lambda batch: None, 8)
    committer.start()
    committer.stop()
    h.storage.use_committer(committer)
    assert run(h, *requests) == replies


def test_refused_flush_all_is_not_ok(tmp_path: Path, backend: str) -> None:
    """A flush_all the store refuses is answered SERVER_ERROR, never OK."""
    h = Harness(tmp_path, backend, flush_all_enabled=True)
    committer = GroupCommitter(h.storage, lambda batch: None, 8)
    committer.start()
    committer.stop()
    h.storage.use_committer(committer)
    assert run(h, b"flush_all\r\n") == [b"SERVER_ERROR storage failure\r\n"]
    h.close()
