"""The shared receive buffer: lines, blocks and the limit rule, fed whole, one byte at a
time and with trailing data; linear cost; the failed state."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.receivebuffer import (
    COMPACT_AT,
    NEED_DATA,
    BadBlockEnd,
    NeedData,
    ReceiveBuffer,
    RemoteProtocolError,
)


def lines_of(pieces: list[bytes]) -> tuple[list[bytes], bytes]:
    """Feed ``pieces`` one after another, taking every complete line after each; the
    lines and what is left."""
    buf = ReceiveBuffer()
    out: list[bytes] = []
    for piece in pieces:
        buf += piece
        while (line := buf.maybe_extract_line()) is not None:
            out.append(line)
    return out, bytes(buf)


LINE_TABLE = [
    (b"get a\r\n", [b"get a"], b""),
    (b"get a\n", [b"get a"], b""),
    (b"\r\n\n", [b"", b""], b""),
    (b"a\r\r\n", [b"a\r"], b""),  # one CR belongs to the line end, the other to the line
    (b"a\rb\n", [b"a\rb"], b""),
    (b"one\r\ntwo\nthr", [b"one", b"two"], b"thr"),
    (b"tail\r", [], b"tail\r"),
    (b"", [], b""),
]


@pytest.mark.parametrize(("wire", "lines", "rest"), LINE_TABLE)
def test_lines_whole_bytewise_and_with_trailing_data(wire: bytes, lines: list[bytes],
                                                     rest: bytes) -> None:
    """Lines come out without their LF and one CR before it, the same whether the bytes
    arrive whole or one at a time, and an incomplete tail stays buffered."""
    assert lines_of([wire]) == (lines, rest)
    assert lines_of([wire[i:i + 1] for i in range(len(wire))]) == (lines, rest)
    assert lines_of([wire, b"x\r\nmore"]) == ([*lines, rest + b"x"], b"more")


def test_blocks_exactly_at_most_move_and_discard() -> None:
    """Exact extraction waits for all its bytes and consumes its end marker; at-most,
    move and discard take what is there; peek, find and endswith leave it in place."""
    buf = ReceiveBuffer()
    buf += b"hello\r\nwor"
    assert buf.maybe_extract_exactly(5, b"\r\n") == b"hello"
    assert buf.maybe_extract_exactly(5) is None and len(buf) == 3
    assert buf.peek(2) == b"wo" and buf.find(b"r") == 2 and buf.find(b"x") == -1
    assert buf.endswith(b"or") and not buf.endswith(b"hello wor")
    buf += b"ld\r\n.rest"
    out = bytearray(b">")
    assert buf.move_at_most(3, out) == 3 and out == b">wor"
    assert buf.maybe_extract_at_most(100) == b"ld\r\n.rest"
    assert buf.maybe_extract_at_most(100) is None
    assert buf.move_at_most(5, out) == 0 and buf.discard_at_most(5) == 0
    buf += b"abcdef"
    assert buf.discard_at_most(4) == 4 and bytes(buf) == b"ef" and buf


def test_a_block_with_the_wrong_end_is_consumed_and_refused() -> None:
    """A block not followed by its end marker raises BadBlockEnd after consuming the block
    and as many bytes as the marker has, so the stream goes on after it."""
    buf = ReceiveBuffer()
    buf += b"12345xxnext\n"
    with pytest.raises(BadBlockEnd):
        buf.maybe_extract_exactly(5, b"\r\n")
    assert buf.maybe_extract_line() == b"next"


def test_large_blocks_are_copied_whole() -> None:
    """A block larger than the small-copy threshold comes out byte for byte."""
    data = bytes(range(256)) * 1000
    buf = ReceiveBuffer()
    for i in range(0, len(data), 4096):
        buf += data[i:i + 4096]
    buf += b"\r\nafter\n"
    assert buf.maybe_extract_exactly(len(data), b"\r\n") == data
    assert buf.maybe_extract_line() == b"after" and not buf


class CountingData(bytearray):
    """A bytearray that counts the bytes its find() calls could have scanned."""

    scanned = 0

    def find(self, sub, start=0, *args):
        CountingData.scanned += max(0, len(self) - start)
        return super().find(sub, start, *args)


def test_a_line_fed_bytewise_is_scanned_once() -> None:
    """Feeding a 64 KiB line one byte at a time never rescans what was already searched."""
    buf = ReceiveBuffer()
    buf._data = CountingData()  # white box: the property is about the internal search
    CountingData.scanned = 0
    line = b"x" * 65536 + b"\n"
    for i in range(len(line)):
        buf += line[i:i + 1]
        got = buf.maybe_extract_line()
    assert got == b"x" * 65536
    assert CountingData.scanned <= 2 * len(line)


def test_consumed_bytes_are_dropped_in_amortised_constant_time() -> None:
    """Taking many small lines out of a large buffer moves no bytes until the consumed
    prefix is COMPACT_AT long and half the buffer, and never keeps more than that."""
    buf = ReceiveBuffer()
    buf += b"get key\r\n" * 100_000
    taken = 0
    while buf.maybe_extract_line() is not None:
        taken += 1
        assert buf._start <= max(COMPACT_AT, len(buf._data) // 2)  # white box
    assert taken == 100_000 and len(buf._data) == 0


def test_the_limit_rule_and_the_failed_state() -> None:
    """need_data returns NEED_DATA up to the limit and raises RemoteProtocolError past it;
    from then on the buffer is empty, ignores input and raises again with the first
    reason."""
    buf = ReceiveBuffer()
    buf += b"x" * 100
    assert buf.need_data(100, "too long") is NEED_DATA
    buf += b"x"
    with pytest.raises(RemoteProtocolError) as info:
        buf.need_data(100, "too long")
    assert info.value.reason == "too long" and str(info.value) == "too long"
    assert buf.failed and len(buf) == 0
    buf += b"more\n"
    assert len(buf) == 0 and buf.maybe_extract_line() is None
    with pytest.raises(RemoteProtocolError, match="too long"):
        buf.need_data(10**9, "other")


def test_fail_drops_everything_and_is_raised_later() -> None:
    """fail() empties the buffer at once and returns the error; need_data raises it."""
    buf = ReceiveBuffer()
    buf += b"abc\n"
    error = buf.fail("literal too large")
    assert isinstance(error, RemoteProtocolError) and error.reason == "literal too large"
    assert not buf and buf.failed
    with pytest.raises(RemoteProtocolError, match="literal too large"):
        buf.need_data(100, "x")


def test_need_data_is_one_object() -> None:
    """NEED_DATA is a singleton, also through copy and pickle, so parsers compare by 'is'."""
    assert NeedData() is NEED_DATA and repr(NEED_DATA) == "NEED_DATA"
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"bc", b"\n\n"]), max_size=40),
       st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=10))
def test_any_chunking_gives_the_lines_a_split_gives(parts: list[bytes],
                                                    sizes: list[int]) -> None:
    """However the bytes are cut into reads, the lines are those of splitting the stream
    at LF (one CR before it dropped), and the rest is what follows the last LF."""
    wire = b"".join(parts)
    pieces = []
    pos = 0
    i = 0
    while pos < len(wire):
        pieces.append(wire[pos:pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    *complete, rest = wire.split(b"\n")
    expected = [line[:-1] if line.endswith(b"\r") else line for line in complete]
    assert lines_of(pieces) == (expected, rest)
