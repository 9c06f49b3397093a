"""The sans-IO POP3 reader and reply writer."""

from __future__ import annotations

import pytest

from imapd.pop3parser import (
    NEED_DATA,
    AuthLine,
    BadLine,
    Pop3Command,
    Pop3Parser,
    RemoteProtocolError,
    dot_stuff,
    err,
    multiline,
    ok,
)


def events(parser: Pop3Parser) -> list[object]:
    out: list[object] = []
    while (event := parser.next_event()) != NEED_DATA:
        out.append(event)
    return out


@pytest.mark.parametrize("chunked", [False, True])
def test_commands_whole_and_one_byte_at_a_time(chunked: bool) -> None:
    """Keywords are upper-cased, arguments kept; CRLF and bare LF both end a line; the
    same events come out whether the bytes arrive at once or one by one."""
    data = b"user Alice\r\nPASS pass word with spaces \r\nretr 1\nTOP 2 10\r\n"
    parser = Pop3Parser()
    got: list[object] = []
    for piece in ([data[i:i + 1] for i in range(len(data))] if chunked else [data]):
        parser.feed(piece)
        got += events(parser)
    assert got == [Pop3Command("USER", ("Alice",)),
                   Pop3Command("PASS", ("pass word with spaces ",)),
                   Pop3Command("RETR", ("1",)), Pop3Command("TOP", ("2", "10"))]


def test_garbage_lines() -> None:
    """Empty lines, control characters, non-UTF-8 and too many words are BadLine."""
    parser = Pop3Parser()
    parser.feed(b"\r\nNOOP\x01\r\n\xff\xfe\r\nA B C D E F\r\nNOOP\r\n")
    got = events(parser)
    assert [type(e) for e in got] == [BadLine, BadLine, BadLine, BadLine, Pop3Command]


def test_long_line_is_refused_and_skipped() -> None:
    """A line above the limit is reported once, before its end arrives, and the next
    line is read normally."""
    parser = Pop3Parser(max_line=100)
    parser.feed(b"USER " + b"x" * 200)
    assert events(parser) == [BadLine("Line too long")]
    parser.feed(b"x" * 50 + b"\r\nNOOP\r\n")
    assert events(parser) == [Pop3Command("NOOP")]


def test_auth_line_and_buffer_limit() -> None:
    """After expect_auth_line the next line is raw; more than max_buffer octets without a
    line end raise RemoteProtocolError, and keep raising."""
    parser = Pop3Parser(max_buffer=1000)
    parser.expect_auth_line()
    parser.feed(b"AGFsaWNlAHB3\r\nQUIT\r\n")
    assert events(parser) == [AuthLine(b"AGFsaWNlAHB3"), Pop3Command("QUIT")]
    parser.feed(b"x" * 2000)
    with pytest.raises(RemoteProtocolError, match="Too much pipelined data"):
        parser.next_event()
    parser.feed(b"NOOP\r\n")
    assert parser.buffered_bytes == 0
    with pytest.raises(RemoteProtocolError, match="Too much pipelined data"):
        parser.next_event()


def test_password_is_not_in_repr() -> None:
    """PASS never shows its argument."""
    assert "secret" not in repr(Pop3Command("PASS", ("secret",)))


def test_replies_and_dot_stuffing() -> None:
    """Lines starting with '.' get another, data ends with CRLF, '.' terminates."""
    assert ok() == b"+OK\r\n" and ok("2 messages") == b"+OK 2 messages\r\n"
    assert err("nope", "SYS/TEMP") == b"-ERR [SYS/TEMP] nope\r\n"
    assert err("a\r\nb") == b"-ERR a??b\r\n"
    assert dot_stuff(b".start\r\nmid\r\n.\r\n..x") == b"..start\r\nmid\r\n..\r\n...x\r\n"
    assert multiline("follows", b"a\r\n") == [b"+OK follows\r\n", b"a\r\n", b".\r\n"]
