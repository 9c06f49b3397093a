"""objstored's expiry sweep: the background job deleting expired items.

Theory of operation.  An expired item is invisible at once (every read checks the time)
and a read that finds one queues its deletion; the sweep removes the ones nobody reads.
A *pass* walks the whole store in key order, ``batch`` keys per *step*, one step every
``interval`` seconds (1000 keys a minute by default), each step one write transaction
(:class:`~objstore.items.ReapOp`) queued behind the clients' writes in group commit.
A pass ends when the walk passes the last key: that is the job's success.

The position is not kept in memory only: after every step the cursor, with when the
pass began and what it has counted, is saved in the data directory (``expiry.state``,
replaced atomically), so a restart resumes the pass where it stopped.  Losing that file
costs at most one walk from the start.

Worker 0 runs the sweep (:meth:`ExpirySweep.run_forever` on a ``LoopingCall`` driven by
the reactor, a ``task.Clock`` in tests) and reports to its job metrics
(``objstore_job_*{job="expiry"}``, see docs/metrics.md): keys examined so far in the
pass, of the items the store held when it began.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from objstore.items import ItemStore, Outcome, ReapOp, Result
from runtime.metrics import JobRecorder

__all__ = ["JOB", "STATE_FILE", "ExpirySweep", "SweepState"]

log = logging.getLogger(__name__)

#: The job's name in metrics and logs.
JOB: Final = "expiry"
#: Where the sweep's position is kept, in the data directory.
STATE_FILE: Final = "expiry.state"
#: Keys examined per step (one write transaction).
BATCH: Final = 1000


@dataclass
class SweepState:
    """Where the current pass is.

    :param cursor: the next key to examine (``""``: the pass starts at the first key).
    :param started: when the pass began (clock seconds), None before its first step.
    :param expected: items the store held when the pass began.
    :param scanned: keys examined so far in this pass.
    :param reclaimed: expired items deleted so far in this pass.
    """

    cursor: bytes = b""
    started: float | None = None
    expected: int = 0
    scanned: int = 0
    reclaimed: int = 0

    def to_json(self) -> str:
        fields = asdict(self)
        fields["cursor"] = self.cursor.hex()
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> SweepState:
        """:raises ValueError: not a saved state."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        fields["cursor"] = bytes.fromhex(fields.get("cursor", ""))
        return cls(**fields)


class ExpirySweep:
    """The sweep of one store.

    :param storage: the store (writes go through its committer).
    :param state_path: the saved position (see :data:`STATE_FILE`).
    :param clock: the reactor (a ``task.Clock`` in tests): schedules steps, dates passes.
    :param recorder: the job's metrics, or None.
    """

    def __init__(self, storage: ItemStore, state_path: Path, clock: IReactorTime,
                 recorder: JobRecorder | None = None, batch: int = BATCH) -> None:
        self.storage = storage
        self.state_path = state_path
        self.clock: Any = clock  # IReactorTime (zope's interface methods confuse mypy)
        self.recorder = recorder
        self.batch = batch
        self.state = self._load()
        self.passes = 0
        self._loop: task.LoopingCall | None = None

    def _load(self) -> SweepState:
        try:
            return SweepState.from_json(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return SweepState()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: unreadable (%s); the sweep starts from the first key",
                        self.state_path, exc)
            return SweepState()

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(self.state.to_json(), encoding="utf-8")
            os.replace(tmp, self.state_path)
        except OSError as exc:  # the sweep goes on; a restart would start the pass over
            log.warning("cannot save the sweep's position in %s: %s", self.state_path, exc)

    def step(self) -> defer.Deferred[None]:
        """Examine the next ``batch`` keys, deleting the expired ones; fires once the
        step's transaction is durable.  A failed step is logged and counted, and the
        next one retries from the same key: the Deferred never fails."""
        state = self.state
        if state.started is None:
            state.started = self.clock.seconds()
            state.expected = self.storage.info()["curr_items"]
        if self.recorder is not None:
            self.recorder.started(at=state.started)
        d = self.storage.write(ReapOp(state.cursor, self.batch))
        return d.addCallback(self._stepped).addErrback(self._failed)

    def _stepped(self, result: Result) -> None:
        if result.outcome is not Outcome.OK or result.record is None:
            raise RuntimeError(f"the sweep's write failed ({result.outcome.value})")
        state = self.state
        state.scanned += result.scanned
        state.reclaimed += result.number or 0
        state.cursor = result.record.key
        if self.recorder is not None:
            self.recorder.progress(state.scanned, state.expected)
        if not state.cursor:  # wrapped: the pass is complete
            self.passes += 1
            if state.reclaimed:
                log.info("expiry sweep: %d expired items deleted of %d keys examined",
                         state.reclaimed, state.scanned)
            if self.recorder is not None:
                self.recorder.succeeded()
            self.state = SweepState()
        self._save()

    def _failed(self, failure: Failure) -> None:
        log.warning("expiry sweep step failed: %s; retrying from the same key",
                    failure.getErrorMessage())
        if self.recorder is not None:
            self.recorder.failed()

    def run_forever(self, interval: float) -> task.LoopingCall:
        """Run a step every ``interval`` seconds (the first after one interval) until
        :meth:`stop`; a step still running delays the next."""
        loop = task.LoopingCall(self.step)
        loop.clock = self.clock
        loop.start(interval, now=False)
        self._loop = loop
        return loop

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.recorder is not None:
            self.recorder.abandoned()

    @property
    def running(self) -> bool:
        return self._loop is not None and bool(self._loop.running)
