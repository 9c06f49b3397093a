"""The event loop the daemons run Twisted's asyncio reactor on.

imapd and directord run ``AsyncioSelectorReactor`` so that asyncpg and redis-py's
asyncio clients share the reactor's loop.  uvloop (libuv, in Cython) runs that loop's
callbacks and I/O polling for less CPU than the standard library's selector loop: on
the IMAP mix of ``ops/bench/imap_bench.py`` it raised objmail's commands/s by about 7 %
(BENCHMARKS.md, "IMAP").  Where uvloop cannot be imported (a platform without its
wheel) the standard loop serves the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop, uvloop's when it is installed, set as the current one."""
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def install_asyncio_reactor() -> Any:
    """Install Twisted's asyncio reactor on :func:`new_event_loop`'s loop (before anything
    imports ``twisted.internet.reactor``); the reactor.

    imapd and directord run on it, so that their asyncio clients share its loop.
    objstored does not: it keeps Twisted's default (epoll) reactor, chosen in each worker
    after the fork, and needs nothing from asyncio.
    """
    from twisted.internet import asyncioreactor

    asyncioreactor.install(new_event_loop())
    from twisted.internet import reactor

    return reactor
