"""Waiting for a state instead of sleeping for a guess.

A system test that sleeps "long enough" for something to happen elsewhere (a notification
crossing PostgreSQL, a worker publishing its counters, a server noticing a closed socket) is
slow when the guess is generous and flaky when the machine is busy.  These helpers poll the
state itself, return as soon as it holds, and fail naming what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually", "wait_until"]

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
               what: str = "") -> T:
    """Call ``predicate`` until it returns something true, and return that.

    :param what: the awaited state, for the failure message.
    :raises AssertionError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        time.sleep(interval)


async def eventually(check: Callable[[], object], timeout: float = 5.0, *,
                     interval: float = 0.02, what: str = "") -> None:
    """:func:`wait_until` for a coroutine: let the event loop run until ``check()`` is true.

    :raises AssertionError: still false after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        await asyncio.sleep(interval)
