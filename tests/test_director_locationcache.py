"""The pure half of directord's location cache (director/locationcache.py): the LRU, the
invalidation by bucket, lookups racing invalidations, the RESP3 reader; and the
``CLUSTER NODES`` parser of director/tracking.py."""

from __future__ import annotations

import pytest

from director.locationcache import (
    NEED_DATA,
    LocationCache,
    Push,
    RespError,
    RespProtocolError,
    RespReader,
    encode_command,
)
from director.tracking import parse_cluster_nodes


def cache_with(limit: int = 10) -> LocationCache:
    cache = LocationCache(limit)
    cache.usable = True
    return cache


def fill(cache: LocationCache, entries: dict[str, tuple[tuple[int, ...], str]]) -> None:
    ticket = cache.begin(b for _n, b in entries.values())
    cache.finish(ticket, entries)


def test_a_looked_up_entry_is_served_from_the_cache() -> None:
    """An entry a lookup found is a hit afterwards; an unknown id is a miss."""
    cache = cache_with()
    fill(cache, {"a": ((1, 2), "ixi:00")})
    assert cache.get("a") == (1, 2)
    assert cache.get("b") is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


def test_an_id_the_index_lacks_is_not_cached() -> None:
    """A lookup that found no entry (``()``) caches nothing: the next read asks Redis."""
    cache = cache_with()
    fill(cache, {"a": ((), "ixi:00")})
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    """Over its limit the cache evicts the entry read least recently, and counts it."""
    cache = cache_with(limit=3)
    for name in "abc":
        fill(cache, {name: ((1,), f"ixi:{name}")})
    assert cache.get("a") == (1,)  # a is now the most recent
    fill(cache, {"d": ((2,), "ixi:d")})
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(n) for n in "acd"] == [(1,), (1,), (2,)]
    assert cache.stats.evictions == 1


def test_an_invalidated_bucket_loses_every_entry_in_it() -> None:
    """An invalidation names a bucket: every cached entry in it goes, others stay."""
    cache = cache_with()
    fill(cache, {"a": ((1,), "ixi:00"), "b": ((2,), "ixi:00"), "c": ((3,), "ixi:01")})
    cache.invalidate(["ixi:00", "ixi:99"])
    assert cache.get("a") is None and cache.get("b") is None
    assert cache.get("c") == (3,)
    assert cache.stats.invalidations == 2


def test_a_lookup_racing_an_invalidation_of_its_bucket_is_not_cached() -> None:
    """A bucket invalidated while a lookup of it is in flight: what that lookup read may
    predate the write, so it is not cached; an entry of another bucket in the same
    lookup is."""
    cache = cache_with()
    ticket = cache.begin(["ixi:00", "ixi:01"])
    cache.invalidate(["ixi:00"])
    cache.finish(ticket, {"a": ((1,), "ixi:00"), "b": ((2,), "ixi:01")})
    assert cache.get("a") is None
    assert cache.get("b") == (2,)
    assert cache.stats.raced == 1


def test_an_invalidation_before_the_lookup_began_does_not_void_it() -> None:
    """Only invalidations after the ticket count: one that came before leaves the lookup
    free to cache (it read after that write)."""
    cache = cache_with()
    cache.invalidate(["ixi:00"])
    ticket = cache.begin(["ixi:00"])
    cache.finish(ticket, {"a": ((1,), "ixi:00")})
    assert cache.get("a") == (1,)


def test_overlapping_lookups_of_one_bucket_are_each_judged_by_their_start() -> None:
    """Two lookups of one bucket; an invalidation between their starts voids the first
    only, and once neither is in flight nothing of the bucket is remembered."""
    cache = cache_with()
    first = cache.begin(["ixi:00"])
    cache.invalidate(["ixi:00"])
    second = cache.begin(["ixi:00"])
    cache.finish(second, {"b": ((2,), "ixi:00")})
    cache.finish(first, {"a": ((1,), "ixi:00")})
    assert cache.get("a") is None
    assert cache.get("b") == (2,)
    third = cache.begin(["ixi:00"])
    cache.finish(third, {"a": ((1,), "ixi:00")})
    assert cache.get("a") == (1,)


def test_a_flush_voids_every_lookup_in_flight() -> None:
    """A flush (a tracking connection lost) empties the cache, and lookups in flight
    cache nothing."""
    cache = cache_with()
    fill(cache, {"a": ((1,), "ixi:00")})
    ticket = cache.begin(["ixi:01"])
    cache.flush()
    cache.finish(ticket, {"b": ((2,), "ixi:01")})
    assert len(cache) == 0
    assert cache.stats.flushes == 1


def test_an_unusable_cache_serves_nothing_and_caches_nothing() -> None:
    """Turning the cache unusable flushes it; while unusable nothing is served, and a
    lookup that began then is not cached even if the cache is usable again when it
    ends (invalidations may have been lost meanwhile)."""
    cache = cache_with()
    fill(cache, {"a": ((1,), "ixi:00")})
    cache.usable = False
    assert len(cache) == 0 and cache.get("a") is None
    ticket = cache.begin(["ixi:00"])
    cache.usable = True
    cache.finish(ticket, {"a": ((1,), "ixi:00")})
    assert cache.get("a") is None


def test_drop_forgets_one_entry() -> None:
    """drop removes one entry and leaves its bucket's others."""
    cache = cache_with()
    fill(cache, {"a": ((1,), "ixi:00"), "b": ((2,), "ixi:00")})
    cache.drop("a")
    cache.drop("zz")
    assert cache.get("a") is None and cache.get("b") == (2,)
    cache.invalidate(["ixi:00"])
    assert len(cache) == 0


def test_a_limit_below_one_is_refused() -> None:
    """A cache of no entries is a bug of the caller (the config uses 0 for off)."""
    with pytest.raises(ValueError):
        LocationCache(0)


# -- RESP3 -------------------------------------------------------------------------------

MESSAGES: list[tuple[bytes, object]] = [
    (b"+OK\r\n", b"OK"),
    (b"+PONG\r\n", b"PONG"),
    (b"-ERR unknown\r\n", RespError(b"ERR unknown")),
    (b":42\r\n", 42),
    (b"$3\r\nabc\r\n", b"abc"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"_\r\n", None),
    (b"#t\r\n", b"t"),
    (b",1.5\r\n", b"1.5"),
    (b"!5\r\nERR x\r\n", RespError(b"ERR x")),
    (b"=8\r\ntxt:a\nbc\r\n", b"a\nbc"),
    (b"*2\r\n$1\r\na\r\n:1\r\n", (b"a", 1)),
    (b"%1\r\n+server\r\n+redis\r\n", (b"server", b"redis")),
    (b"~1\r\n+x\r\n", (b"x",)),
    (b"|1\r\n+ttl\r\n:3\r\n+OK\r\n", b"OK"),
    (b">2\r\n$10\r\ninvalidate\r\n*2\r\n$5\r\nixi:1\r\n$5\r\nixi:2\r\n",
     Push((b"invalidate", (b"ixi:1", b"ixi:2")))),
    (b">2\r\n$10\r\ninvalidate\r\n_\r\n", Push((b"invalidate", None))),
]


@pytest.mark.parametrize(("wire", "expected"), MESSAGES)
def test_resp3_messages_read_whole_and_byte_by_byte(wire: bytes, expected: object) -> None:
    """Each RESP3 type reads the same fed at once or one byte at a time, and the reader
    holds nothing afterwards."""
    whole = RespReader()
    whole.feed(wire)
    assert whole.next() == expected
    assert whole.next() is NEED_DATA and whole.pending == 0
    slow = RespReader()
    for i in range(len(wire)):
        assert slow.next() is NEED_DATA
        slow.feed(wire[i:i + 1])
    assert slow.next() == expected


def test_resp3_messages_back_to_back_with_a_partial_tail() -> None:
    """Several messages in one read come out in order; a partial one waits, counted in
    ``pending``."""
    reader = RespReader()
    reader.feed(b"+PONG\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:7")
    assert reader.next() == b"PONG"
    assert reader.next() == Push((b"invalidate", (b"k",)))
    assert reader.next() is NEED_DATA
    assert reader.pending == 2
    reader.feed(b"\r\n")
    assert reader.next() == 7
    assert reader.pending == 0


def test_an_unknown_type_byte_is_a_protocol_error() -> None:
    """A byte that starts no RESP3 type is refused, not skipped."""
    reader = RespReader()
    reader.feed(b"?what\r\n")
    with pytest.raises(RespProtocolError):
        reader.next()


def test_commands_are_encoded_as_bulk_string_arrays() -> None:
    """encode_command writes what redis-cli would."""
    assert encode_command("CLIENT", "TRACKING", "on", 3, b"\x00") == (
        b"*5\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n$1\r\n3\r\n$1\r\n\x00\r\n")


NODES = b"""\
07c3 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
9a1b 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
c4d5 127.0.0.1:7003@17003 master,fail - 0 1 3 disconnected
e6f7 127.0.0.1:7004@17004 slave 07c3 0 1 1 connected
1122 127.0.0.1:7006@17006 master - 0 1 7 connected 10923-16383
3344 :0@0 handshake - 0 0 0 disconnected
"""


def test_cluster_nodes_gives_the_live_nodes_and_a_fingerprint() -> None:
    """Failed, handshaking and address-less nodes are left out; the fingerprint changes
    when a role or a slot range does."""
    wanted, shape = parse_cluster_nodes(NODES)
    assert wanted == {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7004", "127.0.0.1:7006"}
    moved = NODES.replace(b"connected 5461-10922", b"connected 5462-10922")
    assert parse_cluster_nodes(moved)[1] != shape
    promoted = NODES.replace(b"e6f7 127.0.0.1:7004@17004 slave 07c3",
                             b"e6f7 127.0.0.1:7004@17004 master -")
    assert parse_cluster_nodes(promoted)[1] != shape
    assert parse_cluster_nodes(NODES)[1] == shape
