"""memcached clients for tests that log in as ``memcached -Y`` (and objmail's blob plane)
expects: a first ``set`` of "user password" on every new connection."""

from __future__ import annotations

import socket
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from director.memcache_client import NodeAccess
from objstore.auth import auth_request


def login_request(access: NodeAccess) -> bytes:
    """The bytes that log a connection in (nothing when ``access`` has no user)."""
    return b"".join(auth_request(access.user, access.password)) if access.user else b""


class LoginClient(Client):
    """pymemcache's client, logging in (over TLS when ``access`` says so) each time it
    connects: pymemcache reconnects after an error, and a new connection starts
    unauthenticated."""

    def __init__(self, server: tuple[str, int], access: NodeAccess, **kwargs: Any) -> None:
        kwargs.setdefault("tls_context", access.tls)
        super().__init__(server, **kwargs)
        self.access = access

    def _connect(self) -> None:
        super()._connect()
        request = login_request(self.access)
        if not request:
            return
        sock: socket.socket = self.sock
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
        if reply != b"STORED\r\n":
            self.close()
            raise MemcacheClientError(f"login refused: {reply!r}")
