"""The session's view of its connection: what the Twisted adapter does on its behalf.

The session never touches a transport.  It sends responses, waits for a slow reader to
catch up (:meth:`Connection.drain`), and asks the adapter to switch the parser into its raw
line modes (IDLE's ``DONE``, a SASL response), to start TLS or compression, or to close.  The adapter
(:mod:`imapd.server`) implements it; tests implement it over a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from imapd.response import Response

__all__ = ["Connection"]


class Connection(Protocol):
    """One client connection, as a session sees it."""

    @property
    def secure(self) -> bool:
        """TLS protects the connection (IMAPS, or after STARTTLS)."""
        ...

    @property
    def tls_available(self) -> bool:
        """STARTTLS can be offered (a certificate is configured)."""
        ...

    @property
    def peer(self) -> str:
        """The client's address, for logs."""
        ...

    def send(self, responses: Sequence[Response]) -> None:
        """Write responses now, in order (dropped once the connection is gone)."""

    async def drain(self) -> None:
        """Return once the client reads fast enough to take more output."""

    def start_idle(self, tag: str) -> None:
        """The next line is IDLE's ``DONE`` (call right after sending ``+ idling``)."""

    def start_authenticate(self, tag: str) -> None:
        """The next line is a SASL response (call right after sending a challenge)."""

    def use_utf8_names(self) -> None:
        """From the next command on, mailbox names are UTF-8 both ways, not modified UTF-7
        (IMAP4rev2 was enabled; call before the tagged OK of ENABLE is sent)."""

    def start_tls(self) -> None:
        """Negotiate TLS now (the tagged OK to STARTTLS has been sent); input buffered
        before it is discarded."""

    def start_compress(self) -> None:
        """Compress both ways from now on (COMPRESS=DEFLATE, RFC 4978; the tagged OK has
        been sent uncompressed); input buffered after the command was compressed too."""

    def close(self) -> None:
        """Close the connection once what was sent is written."""
