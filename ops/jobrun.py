"""Running a director's background job in the foreground of an ``objmail`` command.

Shared by ``objmail repair``, ``objmail level`` and ``objmail node drain --wait``: open
a blob client, turn the first Ctrl-C into a stop request that the pass honours at its
next checkpoint (so only the item in hand is at stake, and a rerun resumes from the
saved cursor; a second Ctrl-C aborts at once), draw a progress line on a terminal, and
map errors to exit codes (:mod:`ops.exitcodes`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from director.background import BackgroundJob, PassStats
from director.client import BlobClient
from director.jobstate import JobState
from ops.cli import CommandContext
from ops.config import ConfigError, parse_size
from ops.exitcodes import EX_INTERRUPTED, EX_OK, EX_TEMPFAIL, FAILURES, fail
from ops.node_command import CLI_RETRY

__all__ = ["CLI_RETRY", "EX_INTERRUPTED", "ProgressLine", "StopFlag", "add_run_arguments",
           "cancel_run", "combine", "human", "parse_rate", "run_job", "when"]


class StopFlag:
    """Set by the first Ctrl-C; the second cancels the command outright."""

    def __init__(self, ctx: CommandContext, task: asyncio.Task[Any] | None) -> None:
        self.ctx = ctx
        self.task = task
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def press(self) -> None:
        if self.requested:
            if self.task is not None:
                self.task.cancel()
            return
        self.requested = True
        self.ctx.warn("\nstopping after the current blob (Ctrl-C again to abort now); "
                      "run the command again to resume")


class ProgressLine:
    """One line on stderr, rewritten at most five times a second, when it is a tty."""

    def __init__(self, ctx: CommandContext, what: str) -> None:
        self.ctx = ctx
        self.what = what
        self.tty = ctx.err.isatty()
        self._last = 0.0
        self._shown = False

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty and (force or now - self._last > 0.2):
            self._last = now
            self._shown = True
            print(f"\r\033[K{self.what}: {text}", end="", file=self.ctx.err, flush=True)

    def done(self) -> None:
        if self._shown:
            print(file=self.ctx.err, flush=True)
            self._shown = False

    def stats(self, stats: PassStats) -> None:
        total = f"/{stats.total}" if stats.total is not None else ""
        self.show(f"{stats.items}{total} items, {human(stats.bytes)} copied"
                  + (f", {stats.errors} failed" if stats.errors else ""))


def add_run_arguments(parser: argparse.ArgumentParser, rate_help: str) -> None:
    """``--rate``, ``--status`` | ``--cancel`` and ``--json``: the options of a resumable
    job that reads stored bytes (scrub, index rebuild)."""
    parser.add_argument("--rate", metavar="BYTES", default=None, help=rate_help)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="show a run in progress")
    what.add_argument("--cancel", action="store_true",
                      help="forget a run in progress (the next one starts afresh)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def parse_rate(value: str | None) -> float | None:
    """``--rate`` in bytes per second (``50M``); None when not given.

    :raises ConfigError: not a size, or not positive.
    """
    if value is None:
        return None
    rate = float(parse_size(value, "--rate"))
    if rate <= 0:
        raise ConfigError("--rate", "must be positive")
    return rate


def run_job(ctx: CommandContext,
            work: Callable[[BlobClient, StopFlag], Awaitable[int]]) -> int:
    """Open the blob client, run ``work`` with a stop flag wired to Ctrl-C, close."""

    async def main() -> int:
        flag = StopFlag(ctx, asyncio.current_task())
        loop = asyncio.get_running_loop()
        client = await BlobClient.open(ctx.config.cluster, ctx.config.director, retry=CLI_RETRY,
                                       auth=ctx.credentials.redis)
        # Not possible outside the main thread: Ctrl-C then just interrupts.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, flag.press)
        try:
            return await work(client, flag)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            await client.aclose()

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        ctx.warn("objmail: aborted")
        return EX_INTERRUPTED
    except FAILURES as exc:
        return fail(ctx, exc)


async def cancel_run(ctx: CommandContext, job: BackgroundJob[Any], fields: Sequence[str]) -> int:
    """Forget a resumable job's run in progress (its ``fields``) under the job's lease, so
    the next invocation starts afresh; refused while a director runs the job."""
    lease = job.lease()
    if not await lease.acquire():
        ctx.warn(f"objmail: {job.job} is running now (held by {await lease.holder()}); "
                 "stop it first")
        return EX_TEMPFAIL
    try:
        await JobState(job.runner, job.keys, job.job, lease=lease).forget(*fields)
    finally:
        await lease.release()
    ctx.say(f"{job.job}: no run in progress now")
    return EX_OK


#: Integer stats that are levels, not counts: a combined result keeps the last one.
GAUGES = frozenset({"total", "cursor", "buckets", "remaining", "backlog", "urgent",
                    "full_sweep_left", "to_move"})


def combine(passes: list[Any]) -> dict[str, Any]:
    """Several passes' stats as one JSON object: numbers summed, the last pass's other
    fields, lists concatenated (capped), plus the number of passes."""
    if not passes:
        return {"passes": 0}
    out: dict[str, Any] = {}
    for stats in passes:
        for key, value in dataclasses.asdict(stats).items():
            counter = (isinstance(value, int) and not isinstance(value, bool)
                       and key not in GAUGES) or key == "seconds"
            if counter:
                out[key] = round(out.get(key, 0) + value, 3)
            elif isinstance(value, list):
                out[key] = (out.get(key, []) + value)[:1000]
            else:
                out[key] = value
    out["passes"] = len(passes)
    return out


def when(epoch: float, now: float | None = None) -> str:
    """An epoch as an operator reads it: ``2026-12-07 15:20:01 UTC (3 min ago)``."""
    stamp = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = (time.time() if now is None else now) - epoch
    if ago < 0:
        return stamp
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if ago >= size:
            return f"{stamp} ({ago / size:.0f} {unit} ago)"
    return f"{stamp} ({ago:.0f} s ago)"


def human(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
