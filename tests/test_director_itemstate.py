"""director.itemstate: cas uniques, the flush_all cut-off, and the meta command a write
becomes on the primary replica (pure, no I/O)."""

from __future__ import annotations

import dataclasses
import random

from director.itemstate import (
    CAS_RANDOM_BITS,
    CasClock,
    Copy,
    ItemState,
    ItemWrite,
    copy_after,
    flush_cutoff,
    is_flushed,
    ttl_to_exptime,
    written_at,
)
from objstore import protocol as p

NOW = 1_800_000_000.0


def test_cas_uniques_increase_and_tell_their_time() -> None:
    """Cas uniques strictly increase even when the clock stands still or steps back, and
    say when they were made to the microsecond."""
    now = [NOW]
    clock = CasClock(lambda: now[0], random.Random(7))
    first = clock.next()
    assert abs(written_at(first) - NOW) < 1e-6
    same = [clock.next() for _ in range(100)]
    now[0] -= 5
    back = clock.next()
    assert [first, *same, back] == sorted({first, *same, back})
    assert first < 1 << 63  # fits a signed 64-bit field too


def test_two_clocks_in_one_microsecond_differ_in_the_low_bits() -> None:
    """Two directords writing in the same microsecond get different cas uniques."""
    a = CasClock(lambda: NOW, random.Random(1)).next()
    b = CasClock(lambda: NOW, random.Random(2)).next()
    assert a != b and a >> CAS_RANDOM_BITS == b >> CAS_RANDOM_BITS


def test_flush_cutoff_follows_memcacheds_exptime_rule() -> None:
    """flush_all's delay: 0 or negative is now, up to 30 days relative, beyond a unix time."""
    assert flush_cutoff(0, NOW) == NOW
    assert flush_cutoff(-5, NOW) == NOW
    assert flush_cutoff(10, NOW) == NOW + 10
    assert flush_cutoff(1_900_000_000, NOW) == 1_900_000_000


def test_flushed_means_written_before_a_cutoff_that_has_come() -> None:
    """An item is hidden once the cut-off has come and its cas was made before it; one
    made after, a cut-off still to come, and cas uniques that tell no time are not."""
    clock = CasClock(lambda: NOW)
    before = clock.next()
    assert is_flushed(before, NOW + 1, NOW + 1)
    assert not is_flushed(before, NOW + 1, NOW)  # the cut-off has not come
    assert not is_flushed(before, NOW - 1, NOW)  # written after it
    assert not is_flushed(before, 0.0, NOW)  # never flushed
    assert not is_flushed(4242, NOW, NOW)  # a client's E: no time in it
    assert not is_flushed(None, NOW, NOW)


def test_a_write_request_parses_back_with_our_cas_and_without_q() -> None:
    """The request sent to the primary carries the client's flags, without q (the proxy
    applies it), with E<our cas> unless the client chose its own."""
    parser = p.CommandParser()
    parser.feed(b"ms a2V5 2 T30 F5 C99 MA I N10 c k b O7 q\r\nhi\r\n")
    cmd = parser.next_command()
    assert isinstance(cmd, p.MetaSet)
    write = ItemWrite(b"ms", cmd.flags, cmd.value)
    parser.feed(write.request(cmd.key, 77))
    again = parser.next_command()
    assert isinstance(again, p.MetaSet)
    assert (again.key, again.value) == (b"key", b"hi")
    assert again.flags == dataclasses.replace(cmd.flags, quiet=False, explicit_cas=77)
    assert write.cas_of(77) == 77
    mine = ItemWrite(b"ma", p.MetaFlags(explicit_cas=5))
    assert mine.request(b"k", 77) == b"ma k E5\r\n" and mine.cas_of(77) == 5
    assert ItemWrite(b"md", p.MetaFlags(invalidate=True), new_cas=False).request(
        b"k", None) == b"md k I\r\n"
    assert ItemWrite(b"mg", p.MetaFlags(returns=b"kc", value=True), new_cas=False).request(
        b"k", None) == b"mg k k c v\r\n"


def test_copies_carry_keys_in_base64() -> None:
    """A copy's ms carries its key in base64, so any byte of a key is safe."""
    assert ItemState(b"xy", 7, 0, 99).ms_line(b"a b") == b"ms YSBi 2 b F7 T0 E99"


def test_what_the_other_replicas_get() -> None:
    """Copies follow a write only when it took effect; a win token (W) keeps the item on
    the primary alone."""
    write = ItemWrite(b"ms", p.MetaFlags(), b"v", copy=Copy.VALUE)
    assert copy_after(write, b"HD", ()) is Copy.VALUE
    assert copy_after(write, b"NS", ()) is Copy.NONE
    assert copy_after(write, b"EX", ()) is Copy.NONE
    touch = ItemWrite(b"mg", p.MetaFlags(ttl=30), copy=Copy.TOUCH, new_cas=False)
    assert copy_after(touch, b"VA", (b"t30",)) is Copy.TOUCH
    assert copy_after(touch, b"EN", ()) is Copy.NONE
    assert copy_after(touch, b"VA", (b"W",)) is Copy.DROP


def test_ttls_become_copy_exptimes() -> None:
    """-1 (never) is exptime 0; a copy about to expire still expires."""
    assert ttl_to_exptime(-1) == 0
    assert ttl_to_exptime(0) == 1
    assert ttl_to_exptime(90) == 90
