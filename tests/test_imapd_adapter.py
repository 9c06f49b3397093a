"""The connection handling IMAP and POP3 share (imapd/adapter.py); its adapter behaviour
is pinned through both protocols in test_imapd_server.py and test_imapd_pop3server.py."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from imapd.adapter import no_delay


def test_nagle_is_switched_off_through_tls_wrappers() -> None:
    """no_delay finds setTcpNoDelay on the transport or on the TCP transport a TLS
    wrapper sits on, and leaves transports without one alone."""

    class Tcp:
        delay: bool | None = None

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.delay = enabled

    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.transport = inner

    tcp = Tcp()
    no_delay(Wrapper(tcp))
    assert tcp.delay is True
    no_delay(StringTransport())  # nothing to switch: no error
