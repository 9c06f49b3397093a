"""The ``flush_all`` cut-off directord's workers share: one anonymous shared page."""

from __future__ import annotations

import os

import pytest

from director.flushboard import FlushBoard


def test_a_new_board_holds_no_cutoff() -> None:
    """Before any post the generation is 0 and the cut-off 0.0 (none)."""
    board = FlushBoard()
    assert (board.generation(), board.cutoff()) == (0, 0.0)


def test_each_post_is_a_new_generation_with_its_cutoff() -> None:
    """Every post raises the generation by one and replaces the cut-off, an earlier
    one too (``flush_all 0`` after ``flush_all 100``)."""
    board = FlushBoard()
    assert board.post(2_000_000_100.5) == 1
    assert board.post(2_000_000_000.25) == 2
    assert (board.generation(), board.cutoff()) == (2, 2_000_000_000.25)


@pytest.mark.system  # it forks
def test_a_forked_process_posts_to_the_parents_page() -> None:
    """A board made before a fork is the same page in both processes: what the child
    posts, the parent reads (how a worker's flush_all reaches its siblings)."""
    board = FlushBoard()
    pid = os.fork()
    if pid == 0:
        try:
            board.post(1_234_567_890.5)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (board.generation(), board.cutoff()) == (1, 1_234_567_890.5)
