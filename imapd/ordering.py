"""SORT (RFC 5256, RFC 5957): mailbox entries ordered by their stored keys, in memory.

The entries come from one query (:meth:`metadata.messages.Messages.sort_entries`) in UID
order, which is also sequence-number order; Python's sort is stable (also with
``reverse=True``), so sorting by the least significant key first and the most significant
last leaves exact ties in sequence-number order, as RFC 5256 requires.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from imapd.commands import SortKey
from metadata.records import SortEntry

__all__ = ["sort_entries"]

_KEYS: dict[SortKey, Callable[[SortEntry], object]] = {
    SortKey.ARRIVAL: lambda e: e.internaldate,
    SortKey.CC: lambda e: e.keys.cc,
    SortKey.DATE: lambda e: e.sent_at,
    SortKey.FROM: lambda e: e.keys.from_,
    SortKey.SIZE: lambda e: e.size,
    SortKey.SUBJECT: lambda e: e.keys.subject,
    SortKey.TO: lambda e: e.keys.to,
    SortKey.DISPLAYFROM: lambda e: e.keys.display_from,
    SortKey.DISPLAYTO: lambda e: e.keys.display_to,
}


def sort_entries(entries: Sequence[SortEntry],
                 keys: Sequence[tuple[SortKey, bool]]) -> list[SortEntry]:
    """``entries`` (ascending UID) ordered by ``keys``, each ``(key, reverse)``, most
    significant first."""
    ordered = list(entries)
    for key, reverse in reversed(keys):
        ordered.sort(key=_KEYS[key], reverse=reverse)  # type: ignore[arg-type]
    return ordered
