"""The POP3 adapter on StringTransport and task.Clock: greeting, pipelining in order,
STLS, bad lines, the idle timeout, QUIT releasing the transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

from twisted.internet import task
from twisted.internet.testing import StringTransport

from imapd.backend import Backend
from imapd.pop3server import Pop3Factory, Pop3Protocol
from ops.config import ImapdConfig


class TlsTransport(StringTransport):
    tls_context: object = None

    def startTLS(self, context: object) -> None:
        self.tls_context = context


def harness(**config: Any) -> tuple[Pop3Protocol, TlsTransport, task.Clock, Pop3Factory]:
    clock = task.Clock()
    settings: dict[str, Any] = {"allow_plaintext_auth": True}
    settings.update(config)
    backend = Backend(cast(Any, None), cast(Any, None), cast(Any, None), cast(Any, None),
                      ImapdConfig(**settings), clock)
    factory = Pop3Factory(backend, tls=object(), clock=clock)
    proto = factory.buildProtocol(None)
    transport = TlsTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, factory


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_pipelined_commands_answer_in_order() -> None:
    """Commands sent together are answered one after another, in order (the session
    needs no database for CAPA/USER/QUIT)."""

    async def body() -> None:
        proto, transport, _clock, _factory = harness()
        assert transport.value() == b"+OK objmail POP3 server ready\r\n"
        transport.clear()
        proto.dataReceived(b"CAPA\r\nUSER bob\r\nFROB\r\nQUIT\r\n")
        await settle()
        out = transport.value()
        assert out.startswith(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n")
        assert out.endswith(b".\r\n+OK Send PASS\r\n"
                            b"-ERR Unknown command or wrong state: FROB\r\n+OK Bye\r\n")
        assert transport.disconnecting and transport.producer is None

    run(body)


def test_stls_discards_pipelined_plaintext() -> None:
    """After STLS's +OK the transport starts TLS and a command pipelined behind it in
    plaintext is dropped."""

    async def body() -> None:
        proto, transport, _clock, factory = harness(allow_plaintext_auth=False)
        transport.clear()
        proto.dataReceived(b"STLS\r\nUSER evil\r\n")
        await settle()
        assert transport.value() == b"+OK Begin TLS negotiation\r\n"
        assert transport.tls_context is factory.tls and proto.secure
        proto.dataReceived(b"STLS\r\n")
        await settle()
        assert transport.value().endswith(b"-ERR TLS is not available\r\n")

    run(body)


def test_bad_lines_and_idle_timeout() -> None:
    """A garbage line is -ERR without reaching the session; silence for
    pop3_idle_timeout closes the connection."""

    async def body() -> None:
        proto, transport, clock, _factory = harness(pop3_idle_timeout=600.0)
        transport.clear()
        proto.dataReceived(b"\x01\x02\r\n")
        await settle()
        assert transport.value() == b"-ERR Control characters in command\r\n"
        clock.advance(599)
        assert not transport.disconnecting
        clock.advance(2)
        assert transport.value().endswith(b"-ERR Idle for too long, closing\r\n")
        assert transport.disconnecting

    run(body)
