"""Replies: their exact bytes, and the client-side parser the director reuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore.replies import (
    NEED_DATA,
    ErrorReply,
    Expect,
    MetaDebugReply,
    MetadumpEntry,
    MetadumpReply,
    MetaReply,
    Number,
    Reply,
    ReplyError,
    ReplyParser,
    StatsReply,
    Status,
    Value,
    Values,
    VersionReply,
    error_reply,
    format_metadump_line,
    serialize,
    serialize_into,
)
from runtime import errors as kinds

WIRE: list[tuple[Reply, bytes, Expect]] = [
    (Status(b"STORED"), b"STORED\r\n", Expect.LINE),
    (Status(b"NOT_FOUND"), b"NOT_FOUND\r\n", Expect.LINE),
    (ErrorReply(b"ERROR"), b"ERROR\r\n", Expect.LINE),
    (ErrorReply(b"CLIENT_ERROR", b"bad data chunk"), b"CLIENT_ERROR bad data chunk\r\n",
     Expect.LINE),
    (ErrorReply(b"SERVER_ERROR", b"object too large for cache"),
     b"SERVER_ERROR object too large for cache\r\n", Expect.GET),
    (Number(18446744073709551615), b"18446744073709551615\r\n", Expect.LINE),
    (VersionReply(b"1.6.18-objstore"), b"VERSION 1.6.18-objstore\r\n", Expect.LINE),
    (Values(()), b"END\r\n", Expect.GET),
    (Values((Value(b"a", 5, b"hi"), Value(b"b", 0, b"\r\nEND\r\n", 42))),
     b"VALUE a 5 2\r\nhi\r\nVALUE b 0 7 42\r\n\r\nEND\r\n\r\nEND\r\n", Expect.GET),
    (StatsReply(((b"pid", b"1"), (b"version", b"1.6.18"))),
     b"STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\n", Expect.STATS),
    (StatsReply(()), b"END\r\n", Expect.STATS),
    (MetaReply(b"HD"), b"HD\r\n", Expect.META),
    (MetaReply(b"HD", (b"c5", b"kfoo")), b"HD c5 kfoo\r\n", Expect.META),
    (MetaReply(b"EN"), b"EN\r\n", Expect.META),
    (MetaReply(b"NF", (b"O9",)), b"NF O9\r\n", Expect.META),
    (MetaReply(b"NS"), b"NS\r\n", Expect.META),
    (MetaReply(b"EX"), b"EX\r\n", Expect.META),
    (MetaReply(b"MN"), b"MN\r\n", Expect.META),
    (MetaReply(b"VA", (b"f1", b"W"), b"v\r\nal"), b"VA 5 f1 W\r\nv\r\nal\r\n", Expect.META),
    (MetaReply(b"VA", (), b""), b"VA 0\r\n\r\n", Expect.META),
    (MetaDebugReply(b"k", ((b"exp", b"-1"), (b"la", b"3"))), b"ME k exp=-1 la=3\r\n",
     Expect.META),
    (MetadumpReply((MetadumpEntry(b"a b%", -1, 100, 7, False, 1, 40),
                    MetadumpEntry(b"k", 1800000000, 100, 8, True, 1, 41))),
     b"key=a%20b%25 exp=-1 la=100 cas=7 fetch=no cls=1 size=40\n"
     b"key=k exp=1800000000 la=100 cas=8 fetch=yes cls=1 size=41\nEND\r\n", Expect.METADUMP),
    (MetadumpReply(()), b"END\r\n", Expect.METADUMP),
]


@pytest.mark.parametrize(("reply", "wire", "expect"), WIRE)
def test_serialize(reply: Reply, wire: bytes, expect: Expect) -> None:
    """Each reply has exactly memcached's bytes."""
    assert serialize(reply) == wire


def test_serialize_into_keeps_values_as_chunks() -> None:
    """Large values are passed through as their own chunk (no copy)."""
    big = b"x" * 100_000
    out: list[bytes] = []
    serialize_into(Values((Value(b"k", 0, big),)), out)
    assert any(chunk is big for chunk in out)


def _parse(wire: bytes, expects: list[Expect], chunk: int = 0) -> list[object]:
    parser = ReplyParser()
    for e in expects:
        parser.expect(e)
    out: list[object] = []
    pieces = [wire] if not chunk else [wire[i:i + chunk] for i in range(0, len(wire), chunk)]
    for piece in pieces:
        parser.feed(piece)
        while (reply := parser.next_reply()) is not NEED_DATA:
            out.append(reply)
    return out


@pytest.mark.parametrize(("reply", "wire", "expect"), WIRE)
def test_parse_whole(reply: Reply, wire: bytes, expect: Expect) -> None:
    """The client parser reads back each reply from its bytes."""
    assert _parse(wire, [expect]) == [reply]


@pytest.mark.parametrize(("reply", "wire", "expect"), WIRE)
def test_parse_byte_at_a_time(reply: Reply, wire: bytes, expect: Expect) -> None:
    """The client parser gives the same reply when bytes trickle in."""
    assert _parse(wire, [expect], chunk=1) == [reply]


def test_parse_pipelined_split_everywhere() -> None:
    """All replies in one stream, cut at every byte, parse in order."""
    wire = b"".join(w for _, w, _ in WIRE)
    expects = [e for _, _, e in WIRE]
    want = [r for r, _, _ in WIRE]
    for cut in range(1, len(wire)):
        parser = ReplyParser()
        for e in expects:
            parser.expect(e)
        got = []
        for piece in (wire[:cut], wire[cut:]):
            parser.feed(piece)
            while (reply := parser.next_reply()) is not NEED_DATA:
                got.append(reply)
        assert got == want, cut
        assert parser.pending == 0


def test_metadump_line_format() -> None:
    """Metadump lines end with a bare LF, keys URI-encoded, like memcached."""
    line = format_metadump_line(MetadumpEntry(b"abc-._~", 5, 6, 7, False, 1, 8))
    assert line == b"key=abc-._~ exp=5 la=6 cas=7 fetch=no cls=1 size=8\n"


@pytest.mark.parametrize("garbage", [
    b"HELLO WORLD\r\n", b"VALUE k x 1\r\n", b"VA x\r\n", b"VALUE k 0 1\r\nab\r\n",
    b"STAT a b\r\nSTORED\r\n",
])
def test_garbage_raises(garbage: bytes) -> None:
    """Bytes that are not a memcached reply raise ReplyError (drop the connection)."""
    with pytest.raises(ReplyError):
        _parse(garbage, [Expect.GET])


def test_limits() -> None:
    """An announced value above max_value and an endless line are refused."""
    parser = ReplyParser(max_line=100, max_value=10)
    parser.feed(b"VA 11\r\n")
    with pytest.raises(ReplyError):
        parser.next_reply()
    parser = ReplyParser(max_line=100)
    parser.feed(b"x" * 200)
    with pytest.raises(ReplyError):
        parser.next_reply()


def test_meta_reply_flag_lookup() -> None:
    """MetaReply.flag finds a returned flag's token."""
    reply = MetaReply(b"HD", (b"c42", b"kfoo", b"W"))
    assert reply.flag("c") == b"42"
    assert reply.flag("W") == b""
    assert reply.flag("t") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=20).filter(
    lambda k: all(0x21 <= c < 0x7F for c in k)), st.integers(0, 2**32 - 1),
    st.binary(max_size=200), st.one_of(st.none(), st.integers(0, 2**64 - 1))), max_size=5),
    st.integers(1, 40))
def test_fuzz_values_round_trip(items: list[tuple[bytes, int, bytes, int | None]],
                                chunk: int) -> None:
    """Any get reply survives serialize -> parse, however it is chunked."""
    reply = Values(tuple(Value(*i) for i in items))
    assert _parse(serialize(reply), [Expect.GET], chunk) == [reply]


@pytest.mark.parametrize(("exc", "line"), [
    (kinds.InvalidInput("bad key\r\nsecond line"), b"CLIENT_ERROR bad key second line"),
    (kinds.Corruption("blob ab: every replica is corrupt"),
     b"SERVER_ERROR blob ab: every replica is corrupt"),
    (kinds.Unavailable("Redis Cluster unreachable"), b"SERVER_ERROR Redis Cluster unreachable"),
    (kinds.LimitExceeded("object too large for cache"),
     b"SERVER_ERROR object too large for cache"),
    (kinds.Misconfigured("index_buckets"), b"SERVER_ERROR index_buckets"),
    (ConnectionResetError(104, "Connection reset by peer"),
     b"SERVER_ERROR [Errno 104] Connection reset by peer"),
    (KeyError("internals"), b"SERVER_ERROR internal error"),
    (ReplyError("not a memcached reply"), b"CLIENT_ERROR not a memcached reply"),
])
def test_error_reply_maps_each_kind(exc: BaseException, line: bytes) -> None:
    """memcached's error map: the client's mistake is CLIENT_ERROR, every other kind
    SERVER_ERROR with its message on one line, a bug SERVER_ERROR internal error (its
    details stay in the log)."""
    assert serialize(error_reply(exc)) == line + b"\r\n"
