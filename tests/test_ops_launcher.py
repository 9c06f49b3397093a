"""The launcher's pid files and stopping, on real (tiny) processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.launcher import Launcher, ProcessSpec, _start_time

pytestmark = pytest.mark.system

#: A process that ignores SIGTERM, so only SIGKILL ends it.
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)")


def _spec(name: str, *argv: str) -> ProcessSpec:
    return ProcessSpec(name, "test", tuple(argv) or ("sleep", "120"), (1,), lambda: True)


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_pid_file_holds_one_pid(tmp_path: Path) -> None:
    """A started process's pid file holds its pid alone (kill $(cat x.pid) signals only
    it); its start time is kept beside it and tells a recycled pid from ours."""
    launcher = Launcher(tmp_path)
    spec = _spec("sleeper")
    assert launcher.start(spec)
    pid = launcher.pid_of(spec)
    assert pid is not None
    try:
        assert launcher.pidfile("sleeper").read_text().split() == [str(pid)]
        assert launcher.startfile("sleeper").read_text().strip() == _start_time(pid)
        launcher.startfile("sleeper").write_text("1\n")  # as if the pid had been recycled
        assert launcher.pid_of(spec) is None
        assert not launcher.pidfile("sleeper").exists()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_old_two_number_pid_file_is_still_read(tmp_path: Path) -> None:
    """A pid file of an earlier release (pid and start time on one line) still names its
    process, so an upgrade does not orphan a running cluster."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        launcher = Launcher(tmp_path)
        launcher.pid_dir.mkdir(parents=True)
        launcher.pidfile("old").write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        assert launcher.pid_of(_spec("old")) == proc.pid
        assert launcher.stop(_spec("old"))
        assert _gone(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_stop_a_process_that_leads_no_group(tmp_path: Path) -> None:
    """stop ends a process named in a pid file that is not a process-group leader (it
    shares this test's group) by its pid, without signalling the group, and escalates to
    SIGKILL when it ignores SIGTERM; it never waits without bound."""
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert os.getpgid(proc.pid) == os.getpgid(0) != proc.pid
        launcher = Launcher(tmp_path)
        launcher.pid_dir.mkdir(parents=True)
        launcher.pidfile("stray").write_text(f"{proc.pid}\n")
        t0 = time.monotonic()
        assert launcher.stop(_spec("stray"), timeout=0.5)
        # SIGTERM was ignored for the whole timeout; SIGKILL ended it (stop reaped it).
        assert 0.5 <= time.monotonic() - t0 < 5
        assert _gone(proc.pid)
        assert not launcher.pidfile("stray").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hold_and_release(tmp_path: Path) -> None:
    """A held process shows as held while stopped, until released."""
    launcher = Launcher(tmp_path)
    spec = _spec("n1")
    assert launcher.status(spec).state == "stopped"
    launcher.hold("n1")
    assert launcher.held("n1") and launcher.status(spec).state == "held"
    launcher.release("n1")
    assert launcher.status(spec).state == "stopped"
