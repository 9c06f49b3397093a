"""COMPRESS=DEFLATE's two halves (imapd.deflate) and the parser reading through an
Inflater: the stream is raw DEFLATE both ways (checked against the stdlib's zlib, the
client's side), every response burst can be inflated whole, and compressed input meets the
parser's limits one bounded chunk at a time."""

from __future__ import annotations

import asyncio
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest

from imapd import commands as c
from imapd.deflate import INVALID_DATA, Deflater, Inflater
from imapd.parser import (
    FILTER_CHUNK,
    NEED_DATA,
    BadCommand,
    ContinuationNeeded,
    Limits,
    Parser,
)
from runtime.receivebuffer import RemoteProtocolError
from tests.imapd_support import Env, environment
from tests.metadata_support import fresh_database


def client_deflate(data: bytes) -> bytes:
    """What a client sends: raw DEFLATE, sync-flushed (RFC 4978 section 4)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def events(parser: Parser) -> list[object]:
    out: list[object] = []
    while (event := parser.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def test_every_burst_inflates_whole_as_it_arrives() -> None:
    """Each compress() call is sync-flushed: a raw-DEFLATE client inflates all of it with
    what it has, and the history carries over (a repeated response costs a few bytes)."""
    deflater = Deflater()
    client = zlib.decompressobj(-15)
    line = b"* 1 FETCH (FLAGS (\\Seen) UID 1 BODY[] {5}\r\nhello)\r\n"
    first = deflater.compress([line, b"a OK FETCH completed\r\n"])
    assert client.decompress(first) == line + b"a OK FETCH completed\r\n"
    second = deflater.compress([line])
    assert client.decompress(second) == line
    assert len(second) < len(line) // 2
    assert first.endswith(b"\x00\x00\xff\xff") and second.endswith(b"\x00\x00\xff\xff")


def test_inflater_reads_at_most_the_limit_and_then_the_rest() -> None:
    """read(limit) never returns more than limit octets, also when zlib holds output with
    no input left, and returns everything in the end."""
    data = bytes(range(256)) * 40 + b"z" * 100_000
    inflater = Inflater()
    inflater.feed(client_deflate(data))
    out = bytearray()
    while inflater.ready:
        chunk = inflater.read(1000)
        assert len(chunk) <= 1000
        out += chunk
    assert bytes(out) == data and inflater.pending == 0


def test_commands_arrive_through_the_inflater_even_one_byte_at_a_time() -> None:
    """The parser yields the same commands from compressed input, fed whole or one byte
    at a time, with a literal inside."""
    wire = b"a NOOP\r\nb LOGIN {4+}\r\nfred secret\r\nc LOGOUT\r\n"
    expected = [c.Noop("a"), c.Login("b", "fred", "secret"), c.Logout("c")]
    compressed = client_deflate(wire)
    for step in (len(compressed), 1):
        parser = Parser()
        parser.start_filter(Inflater())
        got: list[object] = []
        for i in range(0, len(compressed), step):
            parser.feed(compressed[i:i + step])
            got.extend(events(parser))
        assert got == expected


def test_octets_buffered_after_the_command_are_inflated_too() -> None:
    """Bytes the client sent right after COMPRESS, already buffered when the filter
    starts, are compressed bytes: they move into the inflater."""
    parser = Parser()
    parser.feed(b"a COMPRESS DEFLATE\r\n" + client_deflate(b"b NOOP\r\n"))
    assert parser.next_event() == c.Compress("a")
    parser.start_filter(Inflater())
    assert events(parser) == [c.Noop("b")]


def test_filter_only_between_commands() -> None:
    """start_filter in the middle of a command, or twice, is a bug (RuntimeError)."""
    parser = Parser()
    parser.feed(b"a LOGIN {3}\r\n")
    parser.next_event()
    with pytest.raises(RuntimeError):
        parser.start_filter(Inflater())
    parser = Parser()
    parser.start_filter(Inflater())
    with pytest.raises(RuntimeError):
        parser.start_filter(Inflater())


def test_invalid_compressed_data_is_fatal() -> None:
    """Input that is not raw DEFLATE ends the connection, now and on every later call."""
    parser = Parser()
    parser.start_filter(Inflater())
    parser.feed(b"\xff\xff\xff\xff not deflate at all")
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as info:
            parser.next_event()
        assert info.value.reason == INVALID_DATA


def test_a_finished_stream_ends_the_input() -> None:
    """After the client's final block (Z_FINISH) nothing more is read as IMAP."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    parser = Parser()
    parser.start_filter(Inflater())
    parser.feed(compressor.compress(b"a NOOP\r\n") + compressor.flush(zlib.Z_FINISH))
    parser.feed(b"b NOOP\r\n")
    assert events(parser) == [c.Noop("a")]
    assert parser.buffered_bytes == 0


def test_a_decompression_bomb_meets_the_line_limit_not_memory() -> None:
    """A 64 MB line compressed to ~64 KB is answered BAD [TOOBIG] and skipped chunk by
    chunk; the next command is read; memory stays a small fraction of the inflated size."""
    bomb = client_deflate(b"a NOOP " + b"x" * (64 * 1024 * 1024) + b"\r\nb NOOP\r\n")
    assert len(bomb) < 200_000
    parser = Parser(Limits())
    parser.start_filter(Inflater())
    tracemalloc.start()
    try:
        parser.feed(bomb)
        got = events(parser)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(got[0], BadCommand) and got[0].tag == "a"
    assert "TOOBIG" in str(got[0].response())
    assert got[1:] == [c.Noop("b")]
    assert peak < 4 * 1024 * 1024, peak


def test_inflation_waits_while_the_parser_holds_enough() -> None:
    """While no event can complete (a literal awaits the server's decision), the parser
    inflates up to pause_buffer and leaves the rest compressed, counted in buffered_bytes
    so the adapter pauses reading; accepting the literal lets inflation go on."""
    limits = Limits(max_buffer=256 * 1024, pause_buffer=128 * 1024, max_line=64 * 1024)
    parser = Parser(limits)
    parser.start_filter(Inflater())
    flood = b"x" * (8 * 1024 * 1024)
    parser.feed(client_deflate(b"a LOGIN {4}\r\n" + flood))
    event = parser.next_event()
    assert event == ContinuationNeeded("a", "LOGIN", 4)
    assert parser.next_event() is NEED_DATA
    held = parser.buffered_bytes
    assert held >= limits.pause_buffer  # so the adapter stops reading
    assert held < limits.pause_buffer + FILTER_CHUNK + 64 * 1024  # the rest stays compressed
    parser.accept_literal()
    # "xxxx" is the password; the rest is one endless line, answered and then skipped.
    event = parser.next_event()
    assert isinstance(event, BadCommand) and event.tag == "a"


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


def test_the_session_compresses_once_and_only_after_login(dsn: str) -> None:
    """COMPRESS=DEFLATE is announced after login only; COMPRESS before login is BAD,
    after it OK (and the connection compresses from then on), and a second COMPRESS is
    NO [COMPRESSIONACTIVE] (RFC 4978 section 3)."""

    async def body(env: Env) -> None:
        await env.user("zed")
        client = env.client()
        before = (await client.send("a CAPABILITY")).split(b"\r\n")[0].split()
        assert b"COMPRESS=DEFLATE" not in before
        assert (await client.send("b COMPRESS DEFLATE")).startswith(b"b BAD ")
        assert not client.conn.compressing
        login = await client.login("zed")
        assert b"COMPRESS=DEFLATE" in login
        assert await client.send("c COMPRESS DEFLATE") == b"c OK DEFLATE active\r\n"
        assert client.conn.compressing
        assert await client.send("d COMPRESS DEFLATE") == (
            b"d NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n")
        assert (await client.send("e COMPRESS GZIP")).startswith(b"e BAD ")

    async def main() -> None:
        async with environment(dsn) as env:
            await body(env)

    asyncio.run(main())
