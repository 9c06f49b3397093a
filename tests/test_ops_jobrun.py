"""The helpers that run a background job in an objmail command: combined stats, Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

from director.drainer import DrainStats
from director.repairer import RepairStats
from ops.jobrun import StopFlag, combine, human, when


class Ctx:
    """What StopFlag needs of a CommandContext: somewhere to warn."""

    def __init__(self) -> None:
        self.err = io.StringIO()

    def warn(self, message: str) -> None:
        print(message, file=self.err)


def test_combine_sums_counts_and_keeps_the_last_levels() -> None:
    """Counters add up over passes; levels (cursor, remaining, backlog) and flags are the
    last pass's; example lists are joined."""
    a = RepairStats(items=3, bytes=100, claimed=3, backlog=7, examples=["x"], seconds=0.5)
    b = RepairStats(items=2, bytes=50, claimed=2, backlog=1, sweep_wrapped=True,
                    examples=["y"], seconds=0.25)
    total = combine([a, b])
    assert (total["items"], total["bytes"], total["claimed"]) == (5, 150, 5)
    assert total["backlog"] == 1 and total["sweep_wrapped"] is True
    assert total["examples"] == ["x", "y"] and total["seconds"] == 0.75
    assert total["passes"] == 2 and total["job"] == "repair"
    drained = combine([DrainStats(cursor=256, moved=4), DrainStats(cursor=0, moved=3,
                                                                   remaining=0, empty=True)])
    assert (drained["cursor"], drained["moved"], drained["remaining"]) == (0, 7, 0)
    assert combine([]) == {"passes": 0}


def test_first_ctrl_c_asks_to_stop_the_second_aborts() -> None:
    """The first Ctrl-C only sets the stop flag (the pass ends after its current item);
    the second cancels the command's task."""
    async def go() -> tuple[bool, bool, str]:
        ctx: Any = Ctx()

        async def forever() -> None:
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(forever())
        flag = StopFlag(ctx, task)
        assert not flag()
        flag.press()
        first = flag() and not task.cancelled()
        await asyncio.sleep(0)
        flag.press()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return first, task.cancelled(), ctx.err.getvalue()

    first, cancelled, said = asyncio.run(go())
    assert first and cancelled
    assert "stopping after the current blob" in said


def test_human_sizes() -> None:
    """Byte counts print in binary units."""
    assert [human(n) for n in (0, 1023, 1536, 5 << 20, 3 << 40)] == \
        ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_when_reads_as_a_date_and_an_age() -> None:
    """Status lines show a UTC date and how long ago, never a bare epoch."""
    epoch = 1_796_656_801.0  # 2026-12-07 15:20:01 UTC
    assert when(epoch, now=epoch + 5) == "2026-12-07 15:20:01 UTC (5 s ago)"
    assert when(epoch, now=epoch + 180) == "2026-12-07 15:20:01 UTC (3 min ago)"
    assert when(epoch, now=epoch + 7200) == "2026-12-07 15:20:01 UTC (2 h ago)"
    assert when(epoch, now=epoch + 3 * 86400) == "2026-12-07 15:20:01 UTC (3 d ago)"
    assert when(epoch, now=epoch - 1) == "2026-12-07 15:20:01 UTC"
