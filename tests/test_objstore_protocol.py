"""The request parser: every command, every error reply, any way the bytes arrive."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore import protocol as p
from objstore.protocol import (
    NEED_DATA,
    Arith,
    CommandParser,
    Delete,
    FlushAll,
    Get,
    Limits,
    MetaArith,
    MetaDebug,
    MetaDelete,
    Metadump,
    MetaFlags,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    RemoteProtocolError,
    Slabs,
    Stats,
    Store,
    TooLarge,
    Touch,
    Verbosity,
    Version,
    encode_command,
)


def parse_all(data: bytes, limits: Limits | None = None, chunk: int = 0) -> list[object]:
    """Feed ``data`` (whole, or ``chunk`` bytes at a time) and collect every command."""
    parser = CommandParser(limits)
    out: list[object] = []
    pieces = [data] if chunk == 0 else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        parser.feed(piece)
        while (cmd := parser.next_command()) is not NEED_DATA:
            out.append(cmd)
    return out


BAD = ProtocolError(p.E_BAD_FORMAT)
ERR = ProtocolError(p.E_ERROR)

# (request bytes, commands the parser yields) — error words checked against memcached 1.6.18.
TABLE: list[tuple[bytes, list[object]]] = [
    (b"get a\r\n", [Get((b"a",))]),
    (b"get a b  c\r\n", [Get((b"a", b"b", b"c"))]),
    (b"  get a\r\n", [Get((b"a",))]),
    (b"get a\n", [Get((b"a",))]),
    (b"gets a b\r\n", [Get((b"a", b"b"), with_cas=True)]),
    (b"gat 10 a b\r\n", [Get((b"a", b"b"), touch=10)]),
    (b"gats -1 a\r\n", [Get((b"a",), with_cas=True, touch=-1)]),
    (b"gat 10\r\n", [Get((), touch=10)]),
    (b"gat x a\r\n", [ProtocolError(p.E_BAD_EXPTIME)]),
    (b"get\r\n", [ERR]),
    (b"get \r\n", [ERR]),
    (b"GET a\r\n", [ERR]),
    (b"get\ta\r\n", [ERR]),
    (b"get " + b"k" * 251 + b"\r\n", [BAD]),
    (b"get " + b"k" * 250 + b"\r\n", [Get((b"k" * 250,))]),
    (b"get a\x01b\r\n", [BAD]),
    (b"\r\n", [ERR]),
    (b"x\r\n", [ERR]),
    (b"set k 1 2 3\r\nabc\r\n", [Store(b"set", b"k", 1, 2, b"abc")]),
    (b"set k 0 0 0\r\n\r\n", [Store(b"set", b"k", 0, 0, b"")]),
    (b"set k 0 0 2\r\n\r\n\r\n", [Store(b"set", b"k", 0, 0, b"\r\n")]),
    (b"set k 0 0 1 noreply\r\nx\r\n", [Store(b"set", b"k", 0, 0, b"x", noreply=True)]),
    (b"set k 0 0 1 extra\r\nx\r\n", [Store(b"set", b"k", 0, 0, b"x")]),
    (b"set k 0 0 1 noreply extra\r\nx\r\n", [ERR, ERR]),
    (b"set k 0 0 +1\r\nx\r\n", [Store(b"set", b"k", 0, 0, b"x")]),
    (b"set k 00 0 01\r\nx\r\n", [Store(b"set", b"k", 0, 0, b"x")]),
    (b"set k 4294967295 0 1\r\nx\r\n", [Store(b"set", b"k", 2**32 - 1, 0, b"x")]),
    (b"set k 4294967296 0 1\r\nx\r\n", [BAD, ERR]),
    (b"set k 0 1e3 1\r\nx\r\n", [BAD, ERR]),
    (b"set k 0 0 1_0\r\nx\r\n", [BAD, ERR]),
    (b"set k -1 0 1\r\nx\r\n", [BAD, ERR]),
    (b"set k 0 -5 1\r\nx\r\n", [Store(b"set", b"k", 0, -5, b"x")]),
    (b"set k 0 0 -1\r\n", [BAD]),
    (b"set k 0 0\r\n", [ERR]),
    (b"set k 0 0 1\r\nabc\r\n", [ProtocolError(p.E_BAD_CHUNK), ERR]),
    (b"set k 0 0 1 noreply\r\nabc\r\n", [ProtocolError(p.E_BAD_CHUNK, noreply=True), ERR]),
    (b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n", [BAD, ERR]),
    (b"add k 0 0 1\r\nx\r\n", [Store(b"add", b"k", 0, 0, b"x")]),
    (b"replace k 0 0 1\r\nx\r\n", [Store(b"replace", b"k", 0, 0, b"x")]),
    (b"append k 0 0 1\r\nx\r\n", [Store(b"append", b"k", 0, 0, b"x")]),
    (b"prepend k 0 0 1\r\nx\r\n", [Store(b"prepend", b"k", 0, 0, b"x")]),
    (b"cas k 0 0 1 99\r\nx\r\n", [Store(b"cas", b"k", 0, 0, b"x", 99)]),
    (b"cas k 0 0 1 99 noreply\r\nx\r\n", [Store(b"cas", b"k", 0, 0, b"x", 99, True)]),
    (b"cas k 0 0 1\r\n", [ERR]),
    (b"cas k 0 0 1 x\r\nz\r\n", [BAD, ERR]),
    (b"delete k\r\n", [Delete(b"k")]),
    (b"delete k 0\r\n", [Delete(b"k")]),
    (b"delete k noreply\r\n", [Delete(b"k", True)]),
    (b"delete k 0 noreply\r\n", [Delete(b"k", True)]),
    (b"delete k 1\r\n", [ProtocolError(p.E_DELETE_USAGE)]),
    (b"delete k 0 0\r\n", [ProtocolError(p.E_DELETE_USAGE)]),
    (b"delete\r\n", [ERR]),
    (b"delete a b c d\r\n", [ERR]),
    (b"incr k 5\r\n", [Arith(b"k", 5)]),
    (b"decr k 18446744073709551615 noreply\r\n", [Arith(b"k", 2**64 - 1, False, True)]),
    (b"incr k 18446744073709551616\r\n", [ProtocolError(p.E_BAD_DELTA)]),
    (b"incr k -1\r\n", [ProtocolError(p.E_BAD_DELTA)]),
    (b"incr k x\r\n", [ProtocolError(p.E_BAD_DELTA)]),
    (b"incr k\r\n", [ERR]),
    (b"decr\r\n", [ERR]),
    (b"touch k 10\r\n", [Touch(b"k", 10)]),
    (b"touch k 10 noreply\r\n", [Touch(b"k", 10, True)]),
    (b"touch k x\r\n", [ProtocolError(p.E_BAD_EXPTIME)]),
    (b"version\r\n", [Version()]),
    (b"version x\r\n", [Version()]),
    (b"verbosity 1\r\n", [Verbosity(1)]),
    (b"verbosity 1 noreply\r\n", [Verbosity(1, True)]),
    (b"verbosity 1 2\r\n", [Verbosity(1)]),
    (b"verbosity\r\n", [ERR]),
    (b"verbosity x\r\n", [BAD]),
    (b"flush_all\r\n", [FlushAll()]),
    (b"flush_all 10\r\n", [FlushAll(10)]),
    (b"flush_all noreply\r\n", [FlushAll(0, True)]),
    (b"flush_all 0 noreply\r\n", [FlushAll(0, True)]),
    (b"flush_all x\r\n", [ProtocolError(p.E_BAD_EXPTIME)]),
    (b"flush_all 1 2 3\r\n", [ERR]),
    (b"stats\r\n", [Stats()]),
    (b"stats settings\r\n", [Stats((b"settings",))]),
    (b"lru_crawler metadump all\r\n", [Metadump(b"all")]),
    (b"lru_crawler metadump\r\n", [ERR]),
    (b"lru_crawler\r\n", [ERR]),
    (b"quit\r\n", [Quit()]),
    (b"mn\r\n", [MetaNoop()]),
    (b"mn x\r\n", [MetaNoop()]),
    (b"mx\r\n", [ERR]),
    (b"mg\r\n", [ERR]),
    (b"md\r\n", [ERR]),
    (b"ma\r\n", [ERR]),
    (b"me\r\n", [BAD]),
    (b"me k\r\n", [MetaDebug(b"k")]),
    (b"mg k\r\n", [MetaGet(b"k")]),
    (b"mg k v k f t c s O123 q\r\n",
     [MetaGet(b"k", MetaFlags(returns=b"kftcsO", value=True, quiet=True, opaque=b"123"))]),
    (b"mg k v T30 N60 R5\r\n", [MetaGet(b"k", MetaFlags(value=True, ttl=30, vivify=60,
                                                        recache=5))]),
    (b"mg YWJj b v k\r\n", [MetaGet(b"abc", MetaFlags(returns=b"bk", base64=True,
                                                      value=True))]),
    (b"mg a b v\r\n", [ProtocolError(p.E_DECODING_KEY)]),
    (b"mg k zz\r\n", [ProtocolError(p.E_INVALID_FLAG)]),
    (b"mg k N\r\n", [ProtocolError(p.E_BAD_TOKEN)]),
    (b"mg k O" + b"1" * 33 + b"\r\n", [ProtocolError(p.E_OPAQUE_TOO_LONG)]),
    (b"mg " + b"k" * 251 + b" v\r\n", [BAD]),
    (b"ms k 2\r\nhi\r\n", [MetaSet(b"k", b"hi")]),
    (b"ms k 2 T90 F7 c k q MA I C5 E9 N30\r\nhi\r\n",
     [MetaSet(b"k", b"hi", MetaFlags(returns=b"ck", quiet=True, ttl=90, client_flags=7,
                                      mode=b"A", invalidate=True, compare_cas=5,
                                      explicit_cas=9, vivify=30))]),
    (b"ms k\r\n", [BAD]),
    (b"ms k x\r\n", [BAD]),
    (b"ms k 2 MZ\r\nhi\r\n", [ProtocolError(p.E_MS_MODE)]),
    (b"ms k 2 T\r\nhi\r\n", [ProtocolError(p.E_BAD_TOKEN)]),
    (b"ms k 2 zz\r\nhi\r\nmn\r\n", [ProtocolError(p.E_INVALID_FLAG), MetaNoop()]),
    (b"ms k 2\r\nhij\r\n", [ProtocolError(p.E_BAD_CHUNK), ERR]),
    (b"md k q I T30 C4\r\n", [MetaDelete(b"k", MetaFlags(quiet=True, invalidate=True, ttl=30,
                                                         compare_cas=4))]),
    (b"md k zz\r\n", [ProtocolError(p.E_INVALID_OR_DUP_FLAG)]),
    (b"ma k\r\n", [MetaArith(b"k")]),
    (b"ma k N0 J13 D2 MD v t c\r\n",
     [MetaArith(b"k", MetaFlags(returns=b"tc", value=True, vivify=0, initial=13, delta=2,
                                mode=b"D"))]),
    (b"ma k M+\r\n", [MetaArith(b"k", MetaFlags(mode=b"I"))]),
    (b"ma k MX\r\n", [ProtocolError(p.E_MA_MODE)]),
    (b"ma k Dx\r\n", [ProtocolError(p.E_INVALID_OR_DUP_FLAG)]),
    # A flag given twice: memcached's words per command.
    (b"mg k v v\r\n", [ProtocolError(p.E_DUP_FLAG)]),
    (b"mg k k k\r\n", [ProtocolError(p.E_DUP_FLAG)]),
    (b"mg k T1 T2\r\n", [ProtocolError(p.E_DUP_FLAG)]),
    (b"ms k 2 T1 T2\r\nhi\r\nmn\r\n", [ProtocolError(p.E_DUP_FLAG), MetaNoop()]),
    (b"md k q q\r\n", [ProtocolError(p.E_INVALID_OR_DUP_FLAG)]),
    (b"ma k N0 N0\r\n", [ProtocolError(p.E_INVALID_OR_DUP_FLAG)]),
    (b"md k C9 c\r\n", [MetaDelete(b"k", MetaFlags(returns=b"c", compare_cas=9))]),
    (b"slabs automove 1\r\n", [Slabs((b"automove", b"1"))]),
    (b"slabs\r\n", [ERR]),
    # Not HTTP: a get whose last key happens to start with HTTP/.
    (b"get / HTTP/1.0\r\n", [Get((b"/", b"HTTP/1.0"))]),
]


@pytest.mark.parametrize(("data", "expected"), TABLE, ids=[repr(d[:40]) for d, _ in TABLE])
def test_table_whole(data: bytes, expected: list[object]) -> None:
    """Each request parses to exactly these commands when fed in one piece."""
    assert parse_all(data) == expected


@pytest.mark.parametrize(("data", "expected"), TABLE, ids=[repr(d[:40]) for d, _ in TABLE])
def test_table_byte_at_a_time(data: bytes, expected: list[object]) -> None:
    """Each request parses the same when it arrives one byte at a time."""
    assert parse_all(data, chunk=1) == expected


NOT_QUIT = [(d, e) for d, e in TABLE if not isinstance(e[-1], Quit)]


@pytest.mark.parametrize(("data", "expected"), NOT_QUIT, ids=[repr(d[:40]) for d, _ in NOT_QUIT])
def test_table_with_trailing_data(data: bytes, expected: list[object]) -> None:
    """Bytes after a request are left for the next command, not swallowed or misparsed."""
    assert parse_all(data + b"version\r\nget tr") == [*expected, Version()]


PIPELINE = (b"set a 0 0 5\r\nhello\r\nget a b\r\nmg a v c\r\nms b 3 T0\r\nxyz\r\n"
            b"incr n 1\r\nbogus\r\ndelete a noreply\r\nset c 0 0 2\r\n\r\n\r\nmn\r\n")
PIPELINE_CMDS = parse_all(PIPELINE)


def test_pipeline_reference() -> None:
    """The reference pipeline yields its nine commands and one ERROR."""
    assert [
        Store(b"set", b"a", 0, 0, b"hello"), Get((b"a", b"b")),
        MetaGet(b"a", MetaFlags(returns=b"c", value=True)),
        MetaSet(b"b", b"xyz", MetaFlags(ttl=0)), Arith(b"n", 1), ERR, Delete(b"a", True),
        Store(b"set", b"c", 0, 0, b"\r\n"), MetaNoop()] == PIPELINE_CMDS


@pytest.mark.parametrize("cut", range(1, len(PIPELINE)))
def test_pipeline_split_at_every_boundary(cut: int) -> None:
    """A pipeline cut in two anywhere parses exactly as the whole."""
    parser = CommandParser()
    out = []
    for piece in (PIPELINE[:cut], PIPELINE[cut:]):
        parser.feed(piece)
        while (cmd := parser.next_command()) is not NEED_DATA:
            out.append(cmd)
    assert out == PIPELINE_CMDS


def test_line_too_long_is_fatal_and_bounded() -> None:
    """A line without end past max_line raises RemoteProtocolError, again on every later
    call, and buffers nothing more."""
    parser = CommandParser(Limits(max_line=1024))
    parser.feed(b"touch " + b"a" * 1000)
    assert parser.next_command() is NEED_DATA
    parser.feed(b"a" * 100)
    with pytest.raises(RemoteProtocolError, match=r"^line too long$"):
        parser.next_command()
    assert parser.closed
    parser.feed(b"x" * 1_000_000)
    assert parser.buffered == 0
    with pytest.raises(RemoteProtocolError, match=r"^line too long$"):
        parser.next_command()


def test_complete_line_over_limit_is_refused() -> None:
    """A line that arrives whole but exceeds max_line is refused the same way, and the
    commands pipelined behind it are dropped."""
    parser = CommandParser(Limits(max_line=1024))
    parser.feed(b"touch " + b"k" * 1100 + b" 1\r\nversion\r\n")
    with pytest.raises(RemoteProtocolError, match=r"^line too long$"):
        parser.next_command()
    assert parser.buffered == 0


def test_multiget_lines_may_exceed_max_line_up_to_max_get_line() -> None:
    """A get of many keys may pass max_line (memcached allows it) but not max_get_line."""
    limits = Limits(max_line=1024, max_get_line=8192)
    keys = tuple(b"key%04d" % i for i in range(900))
    line = b"gets " + b" ".join(keys) + b"\r\n"
    assert parse_all(line, limits, chunk=500) == [Get(keys, with_cas=True)]
    keys = tuple(b"key%04d" % i for i in range(1100))
    with pytest.raises(RemoteProtocolError, match=r"^line too long$"):
        parse_all(b"get " + b" ".join(keys) + b"\r\n", limits, chunk=500)
    with pytest.raises(RemoteProtocolError, match=r"^line too long$"):
        parse_all(b"get " + b" ".join(keys) + b"\r\n", limits)


def test_huge_declared_length_is_swallowed_without_buffering() -> None:
    """A value over max_item_size yields TooLarge and its bytes are discarded as they come."""
    parser = CommandParser(Limits(max_item_size=1024))
    parser.feed(b"set big 0 0 2000000\r\n")
    assert parser.next_command() == TooLarge(b"set", b"big")
    for _ in range(20):
        parser.feed(b"z" * 100_000)
        assert parser.next_command() is NEED_DATA
        assert parser.buffered == 0
    parser.feed(b"\r\nversion\r\n")
    assert parser.next_command() == Version()


def test_too_large_noreply_and_meta() -> None:
    """TooLarge keeps noreply for classic commands; ms too large names its key."""
    assert parse_all(b"set k 0 0 2000 noreply\r\n" + b"x" * 2000 + b"\r\n",
                     Limits(max_item_size=1024)) == [TooLarge(b"set", b"k", True)]
    assert parse_all(b"ms k 2000\r\n" + b"x" * 2000 + b"\r\nmn\r\n",
                     Limits(max_item_size=1024)) == [TooLarge(b"ms", b"k"), MetaNoop()]


def test_value_at_max_item_size_is_accepted() -> None:
    """A value of exactly max_item_size bytes is a normal store."""
    value = bytes(range(256)) * 4
    assert parse_all(b"set k 0 0 1024\r\n" + value + b"\r\n", Limits(max_item_size=1024)) == [
        Store(b"set", b"k", 0, 0, value)]


def test_binary_value_with_crlf_inside() -> None:
    """Values are length-delimited: CR, LF and NUL inside are data."""
    value = b"\r\n\x00END\r\nVALUE x 0 1\r\n"
    assert parse_all(b"set k 0 0 %d\r\n%s\r\n" % (len(value), value), chunk=3) == [
        Store(b"set", b"k", 0, 0, value)]


@pytest.mark.parametrize("line", [b"GET / HTTP/1.0\r\n", b"PUT /x HTTP/1.1\r\n",
                                  b"DELETE /k HTTP/1.1\r\n", b"POST / HTTP/1.1\r\n"])
def test_http_request_lines_close_silently(line: bytes) -> None:
    """A line that looks like an HTTP request (an unknown command whose last word starts
    with HTTP/) ends the connection without a reply, as memcached does; nothing after it
    is parsed."""
    assert parse_all(line + b"Host: x\r\n\r\nversion\r\n") == [
        ProtocolError(b"", fatal=True, noreply=True)]


@pytest.mark.parametrize("data", [
    b"\x80\x0a" + b"\x00" * 22,  # a binary noop: no newline anywhere
    b"\x80\x00\x00\x03" + b"\x00" * 7 + b"\x03" + b"\x00" * 12 + b"foo",  # binary get
    b"\x80\x0a\x00\x00\n" + b"\x00" * 19,  # one that happens to hold a newline
])
def test_binary_protocol_is_answered_error_and_closes(data: bytes) -> None:
    """A request with the binary protocol's magic byte gets ERROR at once and ends the
    connection (its stream cannot be read as text)."""
    assert parse_all(data + b"version\r\n") == [ProtocolError(p.E_ERROR, fatal=True)]
    assert parse_all(data, chunk=1)[:1] == [ProtocolError(p.E_ERROR, fatal=True)]


def test_quit_stops_parsing() -> None:
    """Nothing after quit is parsed."""
    assert parse_all(b"quit\r\nget a\r\n") == [Quit()]


def test_is_valid_key() -> None:
    """Keys are 1..250 bytes without spaces or control characters; UTF-8 is allowed."""
    assert p.is_valid_key(b"a" * 250)
    assert p.is_valid_key("é".encode())
    for bad in (b"", b"a" * 251, b"a b", b"a\tb", b"a\x7f", b"a\r"):
        assert not p.is_valid_key(bad)


ROUND_TRIP = [c for c in PIPELINE_CMDS if not isinstance(c, ProtocolError)] + [
    Get((b"a",), True, 5), Touch(b"k", 3, True), Verbosity(2), FlushAll(5, True),
    Stats((b"items",)), Metadump(b"all"), MetaDebug(b"\x00bin", True), Quit(), Version(),
    MetaGet(b"\x00\xffbin", MetaFlags(returns=b"bkO", base64=True, opaque=b"7", value=True)),
    MetaArith(b"c", MetaFlags(returns=b"t", mode=b"D", delta=5, initial=1, vivify=0)),
    MetaDelete(b"d", MetaFlags(invalidate=True, ttl=5, quiet=True)),
    Store(b"cas", b"k", 3, -1, b"\x00\r\n", 77, True), Slabs((b"automove", b"0")),
]


@pytest.mark.parametrize("cmd", ROUND_TRIP, ids=[type(c).__name__ for c in ROUND_TRIP])
def test_encode_round_trip(cmd: object) -> None:
    """encode_command is the parser's inverse."""
    assert parse_all(encode_command(cmd)) == [cmd]  # type: ignore[arg-type]


def test_encode_refuses_parser_outcomes() -> None:
    """ProtocolError and TooLarge are not requests."""
    with pytest.raises(TypeError):
        encode_command(ProtocolError(b"ERROR"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\r\n", b"\n", b" ", b"get ", b"set k 0 0 ", b"ms k ", b"mg k ",
                     b"99999999999 ", b"noreply", b"-1 ", b"0 ", b"b ", b"v", b"cas ",
                     b"lru_crawler metadump ", b"incr ", b"O"])),
    max_size=40), st.integers(min_value=1, max_value=17))
def test_fuzz_no_exception_and_bounded(pieces: list[bytes], chunk: int) -> None:
    """Arbitrary input raises nothing but RemoteProtocolError (after which the parser stays
    failed and empty), and the buffer stays within the limits."""
    limits = Limits(max_line=600, max_item_size=2048)
    parser = CommandParser(limits)
    data = b"".join(pieces)
    for i in range(0, len(data), chunk):
        parser.feed(data[i:i + chunk])
        while True:
            try:
                cmd = parser.next_command()
            except RemoteProtocolError:
                assert parser.closed and parser.buffered == 0
                break
            if cmd is NEED_DATA:
                break
            assert isinstance(cmd, (Get, Store, Delete, Arith, Touch, Version, Verbosity, Quit,
                                    FlushAll, Stats, Metadump, MetaGet, MetaSet, MetaDelete,
                                    MetaArith, MetaDebug, MetaNoop, ProtocolError, TooLarge))
        assert parser.buffered <= max(limits.max_get_line, limits.max_item_size + 2) + chunk


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(min_value=1, max_value=50))
def test_fuzz_values_round_trip(value: bytes, chunk: int) -> None:
    """Any value survives encode -> parse, however it is chunked."""
    cmd = Store(b"set", b"key", 5, 0, value)
    assert parse_all(encode_command(cmd), chunk=chunk) == [cmd]
