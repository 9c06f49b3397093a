"""The ``flush_all`` cut-off that directord's workers share.

Every directord reads the items' cut-off from Redis with its registry snapshot, every
2 s at most (docs/director.md, "Items: cas, incr and replicas"), so another directord
hides flushed items up to 2 s after the one that took the ``flush_all``.  Workers of one
directord are expected to behave as one server: a client whose connections land on two
workers must not read through the second what it just flushed through the first.  So the
supervisor maps one anonymous shared page before it forks (every worker, a replacement
too, inherits the same page) and the worker that takes a ``flush_all`` posts its cut-off
there after Redis took it; the others see it on their next read.

Layout: the cut-off (a double, unix seconds) at offset 8, then the generation (a counter)
at offset 0, written in that order: a reader that sees a new generation reads that
cut-off or a later one, never an older one.  Two workers posting at the same instant may
both write one generation; the cut-off left is one of theirs, both "now".
"""

from __future__ import annotations

import mmap
import struct
from typing import Final

__all__ = ["FlushBoard"]

_GENERATION: Final = struct.Struct("<Q")
_CUTOFF: Final = struct.Struct("<d")


class FlushBoard:
    """One shared page: the last ``flush_all`` cut-off a worker took, and its generation."""

    def __init__(self) -> None:
        # Anonymous and shared (Python's default flags): the forked workers map this page.
        self._map = mmap.mmap(-1, mmap.PAGESIZE)

    def generation(self) -> int:
        """How many cut-offs were posted (0: none); cheap enough for every read."""
        return int(_GENERATION.unpack_from(self._map, 0)[0])

    def cutoff(self) -> float:
        """The last cut-off posted (unix seconds; 0.0: none)."""
        return float(_CUTOFF.unpack_from(self._map, 8)[0])

    def post(self, cutoff: float) -> int:
        """Publish ``cutoff`` to the other workers; returns its generation."""
        generation = self.generation() + 1
        _CUTOFF.pack_into(self._map, 8, cutoff)
        _GENERATION.pack_into(self._map, 0, generation)
        return generation

    def close(self) -> None:
        self._map.close()
