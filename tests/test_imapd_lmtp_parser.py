"""Tables for the sans-IO LMTP reader: commands, DATA framing, dot-stuffing, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imapd.lmtp_parser import (
    NEED_DATA,
    PAUSED,
    Command,
    LineTooLong,
    LMTPParser,
    MessageData,
)


def events(parser: LMTPParser) -> list[object]:
    """Every event available now; a delivery is answered at once (resume after PAUSED)."""
    out: list[object] = []
    while (event := parser.next_event()) is not NEED_DATA:
        if event is PAUSED:
            parser.resume()
            continue
        out.append(event)
    return out


def feed_bytewise(parser: LMTPParser, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        out += events(parser)
    return out


@pytest.mark.parametrize(("line", "expected"), [
    (b"LHLO mx.example.org\r\n", Command("LHLO", "mx.example.org")),
    (b"lhlo  mx\r\n", Command("LHLO", "mx")),
    (b"MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME\r\n",
     Command("MAIL", "FROM:<a@b.c> SIZE=100 BODY=8BITMIME")),
    (b"RCPT TO:<u@d>\n", Command("RCPT", "TO:<u@d>")),
    (b"DATA\r\n", Command("DATA", "")),
    (b"QUIT\r\n", Command("QUIT", "")),
])
def test_command_lines(line: bytes, expected: Command) -> None:
    """A command line gives its upper-cased verb and its argument, whole or byte by byte."""
    parser = LMTPParser()
    parser.feed(line)
    assert events(parser) == [expected]
    assert feed_bytewise(LMTPParser(), line) == [expected]


def test_pipelined_commands_and_trailing_partial_line() -> None:
    """Several pipelined commands come out in order; a partial line waits."""
    parser = LMTPParser()
    parser.feed(b"MAIL FROM:<>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDA")
    assert events(parser) == [Command("MAIL", "FROM:<>"), Command("RCPT", "TO:<a@x>"),
                              Command("RCPT", "TO:<b@x>")]
    parser.feed(b"TA\r\n")
    assert events(parser) == [Command("DATA", "")]


MESSAGE = (b"From: a@b\r\nSubject: dots\r\n\r\n..leading dot was stuffed\r\n"
           b"middle . dot\r\n.\r\nnot end: stuffed single dot above\r\n")
WIRE = (b"From: a@b\r\nSubject: dots\r\n\r\n...leading dot was stuffed\r\n"
        b"middle . dot\r\n..\r\nnot end: stuffed single dot above\r\n.\r\nQUIT\r\n")


@pytest.mark.parametrize("bytewise", [False, True])
def test_data_unstuffs_and_stops_at_lone_dot(bytewise: bool) -> None:
    """DATA undoes dot-stuffing, keeps every other byte, and ends at the lone dot line."""
    parser = LMTPParser()
    parser.start_data()
    if bytewise:
        got = feed_bytewise(parser, WIRE)
    else:
        parser.feed(WIRE)
        got = events(parser)
    assert got == [MessageData(MESSAGE, len(MESSAGE)), Command("QUIT", "")]


def test_data_keeps_bare_lf_and_8bit() -> None:
    """Bare LF line endings and 8-bit bytes pass through DATA unchanged."""
    parser = LMTPParser()
    parser.start_data()
    message = b"Subject: \xe9t\xe9\n\nbody\xff\n"
    parser.feed(message + b".\n")
    assert events(parser) == [MessageData(message, len(message))]


def test_too_big_message_is_read_to_the_end_but_not_kept() -> None:
    """A message over max_message is consumed to its end and flagged too_big."""
    parser = LMTPParser(max_message=10)
    parser.start_data()
    parser.feed(b"0123456789abcdef\r\nmore\r\n.\r\nNOOP\r\n")
    (data, noop) = events(parser)
    assert isinstance(data, MessageData) and data.too_big and data.data == b""
    assert data.size == 24
    assert noop == Command("NOOP", "")


def test_long_command_line_is_refused_and_bounded() -> None:
    """A command line over max_line is dropped (memory stays bounded) and reported once."""
    parser = LMTPParser(max_line=64)
    for _ in range(100):
        parser.feed(b"x" * 1000)
        assert events(parser) == []
        assert len(parser._buf) <= 1000 + 64
    parser.feed(b"\r\nNOOP\r\n")
    assert events(parser) == [LineTooLong(), Command("NOOP", "")]


def test_paused_after_the_message_until_resumed() -> None:
    """After the message the parser returns PAUSED, however much is pipelined behind it,
    until resume(); then the pipelined commands come out in order."""
    parser = LMTPParser()
    parser.start_data()
    parser.feed(b"Subject: x\r\n\r\nbody\r\n.\r\nRSET\r\n")
    assert parser.next_event() == MessageData(b"Subject: x\r\n\r\nbody\r\n", 20)
    assert parser.paused
    parser.feed(b"NOOP\r\n" * 1000)
    assert parser.next_event() is PAUSED
    assert parser.next_event() is PAUSED
    assert parser.buffered_bytes == len(b"RSET\r\n") + 6000
    parser.resume()
    assert not parser.paused
    assert events(parser) == [Command("RSET", "")] + [Command("NOOP", "")] * 1000


def test_resume_and_start_data_out_of_turn_are_bugs() -> None:
    """resume() without a paused message, and start_data() while paused, are our own
    misuse: they raise."""
    parser = LMTPParser()
    with pytest.raises(RuntimeError):
        parser.resume()
    parser.start_data()
    parser.feed(b"x\r\n.\r\n")
    assert parser.next_event() == MessageData(b"x\r\n", 3)
    with pytest.raises(RuntimeError):
        parser.start_data()


@pytest.mark.parametrize("trailing", [b"", b"QUIT\r\n", b"QU"])
def test_message_whole_bytewise_and_with_trailing_data(trailing: bytes) -> None:
    """A message with stuffed dots reads the same fed whole or one byte at a time, and
    what trails it is left for after resume()."""
    for bytewise in (False, True):
        parser = LMTPParser()
        parser.start_data()
        wire = WIRE.split(b".\r\nQUIT")[0] + b".\r\n" + trailing
        if bytewise:
            got = feed_bytewise(parser, wire)
        else:
            parser.feed(wire)
            got = events(parser)
        expected: list[object] = [MessageData(MESSAGE, len(MESSAGE))]
        if trailing.endswith(b"\n"):
            expected.append(Command("QUIT", ""))
        assert got == expected
        assert parser.buffered_bytes == (0 if trailing.endswith(b"\n") else len(trailing))


def test_start_data_twice_is_a_bug() -> None:
    """Calling start_data while already in DATA is our own misuse: it raises."""
    parser = LMTPParser()
    parser.start_data()
    with pytest.raises(RuntimeError):
        parser.start_data()


def test_large_message_is_linear() -> None:
    """A 20 MB message fed in 64 KiB reads is assembled exactly (no quadratic rescans)."""
    body = b"".join(b"line %07d of the message body, some filler text\r\n" % i
                    for i in range(400_000))
    wire = body + b".\r\n"
    parser = LMTPParser(max_message=64 << 20)
    parser.start_data()
    got = []
    for i in range(0, len(wire), 65536):
        parser.feed(wire[i:i + 65536])
        got += events(parser)
    assert got == [MessageData(body, len(body))]


_LINE = st.sampled_from([b"", b".", b"..", b".x", b"x.", b"text", b"\xff.", b" .", b"\r",
                         b"...", b"a.b"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_LINE, st.sampled_from([b"\r\n", b"\n"])), max_size=20),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10))
def test_any_message_survives_stuffing_in_any_reads(lines: list[tuple[bytes, bytes]],
                                                    reads: list[int]) -> None:
    """Whatever the lines (leading dots, CR, LF or CRLF) and however the reads split the
    wire, DATA gives back exactly the message an MTA dot-stuffed."""
    message = b"".join(text + eol for text, eol in lines)
    wire = b"".join((b"." + text if text.startswith(b".") else text) + eol
                    for text, eol in lines) + b".\r\nNOOP\r\n"
    parser = LMTPParser()
    parser.start_data()
    got: list[object] = []
    pos = 0
    i = 0
    while pos < len(wire):
        size = reads[i % len(reads)]
        parser.feed(wire[pos:pos + size])
        got += events(parser)
        pos += size
        i += 1
    assert got == [MessageData(message, len(message)), Command("NOOP", "")]
