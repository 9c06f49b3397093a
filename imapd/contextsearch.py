"""Updating searches (RFC 5267 CONTEXT=SEARCH, CONTEXT=SORT): the result sets a session keeps
and the ADDTO / REMOVEFROM updates that bring the client's copy up to date.

Theory of operation
-------------------
``SEARCH RETURN (UPDATE ...)`` or ``SORT RETURN (UPDATE ...)`` leaves a :class:`Context` in
the selected mailbox's :class:`Contexts`: the command's tag, its criteria (and sort keys),
whether it numbers by UID, and the UIDs of its result in the order the client holds them
(mailbox order for SEARCH, the requested order for SORT).  Results are kept as UIDs and
turned into message numbers only when a response is built, so a context numbered by
sequence stays right while the client renumbers on EXPUNGE.

Two moments change a result:

1. an expunge the session is about to report: :meth:`Contexts.expunged` answers
   REMOVEFROM for every context holding one of the UIDs, *before* the EXPUNGE responses,
   while their sequence numbers are still valid (RFC 5267 4.3.4);
2. anything else (new messages after EXISTS, flags, a message leaving a sequence range):
   the selected mailbox works out the new result and :meth:`Contexts.changes` answers the
   difference with REMOVEFROM then ADDTO (:func:`diff`).  A SEARCH whose criteria judge a
   message by its own data alone (:func:`by_message_alone`: no sequence numbers, ``*``,
   ``$`` or ``\\Recent``) can only change for messages whose mod-sequence moved, so only
   those are searched again (:func:`merged`); such a SORT, whose keys never change after
   delivery, runs again whole only when one of them entered or left the result; any other
   search runs again whole, as the unmodified command would run now.

For SEARCH every update uses context position 0 and a set in mailbox order (RFC 5267 4.3.3
allows that and recommends mailbox order).  For SORT the positions are exact: removals walk
the old list and name where each run starts once the previous runs are gone; additions walk
the new list and name each run's final position, so applying the pairs in order, as the
client must (RFC 5267 4.3.2), yields the new list.  SORT keys never change after delivery,
so the messages kept keep their relative order; should they not (a sort key that could
change), only the longest run still in order is kept and the rest is removed and re-added.

Limits (RFC 5267 4.3.1 lets a server refuse with NOUPDATE): :data:`MAX_CONTEXTS` updating
searches per session, and results of at most :data:`MAX_KEPT` messages, kept as 32-bit
arrays (400 KB each at most, 2 MB per session).  Pure: no I/O.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from imapd.commands import SortKey
from imapd.response import ContextUpdate, ESearchData
from imapd.searchkeys import Flag, SearchKey, SeqNumbers, Uid, walk
from imapd.sequence import SequenceSet

__all__ = [
    "MAX_CONTEXTS",
    "MAX_KEPT",
    "Context",
    "Contexts",
    "Pairs",
    "apply_update",
    "by_message_alone",
    "diff",
    "merged",
    "ordered_set",
]

#: Updating searches one session may keep at once (RFC 5267 asks for at least one).
MAX_CONTEXTS = 5
#: Messages a kept result may hold; a larger result is answered but not kept (NOUPDATE).
MAX_KEPT = 100_000

#: ``(context position, UIDs in order)`` pairs of one ADDTO or REMOVEFROM.
Pairs = list[tuple[int, list[int]]]


def ordered_set(numbers: Sequence[int]) -> SequenceSet:
    """``numbers`` as a sequence set that keeps their order: runs of consecutive ascending
    numbers become ranges, nothing else does (RFC 5267 3.2: a range must list its members
    in increasing order, so ``3,2,1`` stays as it is).

    :raises ValueError: ``numbers`` is empty.
    """
    ranges: list[tuple[int, int]] = []
    for number in numbers:
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    if not ranges:
        raise ValueError("cannot build a sequence set from no numbers")
    return SequenceSet(tuple(ranges))


def by_message_alone(criteria: SearchKey) -> bool:
    """Whether ``criteria`` judge a message by its own data: no sequence numbers, no ``*``
    or ``$`` (they depend on the session's view) and no ``\\Recent`` (claimed per
    session).  Such a result changes only where a message's mod-sequence moved (a
    delivery or a flag change) or a message was expunged."""
    for node in walk(criteria):
        if isinstance(node, SeqNumbers):
            return False
        if isinstance(node, Uid) and (node.ids.saved or node.ids.uses_star):
            return False
        if isinstance(node, Flag) and node.name == "\\Recent":
            return False
    return True


def merged(old: Iterable[int], changed: Iterable[int], matching: Iterable[int]) -> list[int]:
    """A mailbox-order result after some messages changed: ``old`` without the ``changed``
    ones, plus those of them that match now (``matching``)."""
    return sorted(set(old).difference(changed).union(matching))


def _increasing_run(values: Sequence[int]) -> set[int]:
    """Indexes into ``values`` of one longest strictly increasing subsequence
    (patience sorting, O(n log n))."""
    tails: list[int] = []  # tails[k]: smallest last value of an increasing run of k + 1
    tail_index: list[int] = []
    parent: list[int] = [-1] * len(values)
    for i, value in enumerate(values):
        k = bisect.bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            tail_index.append(i)
        else:
            tails[k] = value
            tail_index[k] = i
        parent[i] = tail_index[k - 1] if k else -1
    kept: set[int] = set()
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        kept.add(i)
        i = parent[i]
    return kept


def diff(old: Sequence[int], new: Sequence[int], *, ordered: bool) -> tuple[Pairs, Pairs]:
    """The REMOVEFROM and ADDTO pairs (UIDs) that turn the result ``old`` into ``new``.

    :param ordered: a SORT result, where positions count; else a SEARCH result (both in
        mailbox order) answered at position 0.
    """
    if not ordered:
        new_set, old_set = set(new), set(old)
        gone = [u for u in old if u not in new_set]
        fresh = [u for u in new if u not in old_set]
        return ([(0, gone)] if gone else []), ([(0, fresh)] if fresh else [])
    place = {uid: i for i, uid in enumerate(new)}
    survivors = [u for u in old if u in place]
    in_order = _increasing_run([place[u] for u in survivors])
    kept = {u for i, u in enumerate(survivors) if i in in_order}
    removals: Pairs = []
    position = 1  # where the next old entry stands once earlier removals are applied
    run_open = False
    for uid in old:
        if uid in kept:
            position += 1
            run_open = False
        elif run_open:
            removals[-1][1].append(uid)
        else:
            removals.append((position, [uid]))
            run_open = True
    additions: Pairs = []
    run_open = False
    for index, uid in enumerate(new, start=1):
        if uid in kept:
            run_open = False
        elif run_open:
            additions[-1][1].append(uid)
        else:
            additions.append((index, [uid]))
            run_open = True
    return removals, additions


def apply_update(result: list[int], kind: str, pairs: Iterable[tuple[int, Sequence[int]]],
                 ) -> list[int]:
    """What a client's result becomes after one ADDTO or REMOVEFROM (RFC 5267 4.3.3,
    4.3.4), pair by pair in order; position 0 inserts in mailbox (ascending) order and
    removes wherever the members are.  The client's side of :func:`diff`, for tests and
    as the definition the server's arithmetic must meet."""
    out = list(result)
    for position, members in pairs:
        if kind == "ADDTO":
            if position == 0:
                out = sorted(set(out) | set(members))
            else:
                out[position - 1:position - 1] = list(members)
        elif kind == "REMOVEFROM":
            if position == 0:
                drop = set(members)
                out = [u for u in out if u not in drop]
            else:
                if out[position - 1:position - 1 + len(members)] != list(members):
                    raise ValueError(f"REMOVEFROM ({position} ...) names results not there")
                del out[position - 1:position - 1 + len(members)]
        else:
            raise ValueError(f"not a context update: {kind!r}")
    return out


@dataclass
class Context:
    """One updating search (see the module docstring).

    :ivar keys: the SORT keys; None for a SEARCH (results in mailbox order).
    :ivar uids: the result as the client holds it (UIDs are 32-bit: a compact array).
    :ivar by_data: the criteria judge messages by their own data alone
        (:func:`by_message_alone`), so only the changed messages can change the result.
    """

    tag: str
    uid: bool
    criteria: SearchKey
    keys: tuple[tuple[SortKey, bool], ...] | None
    uids: array[int]
    by_data: bool = False

    @classmethod
    def of(cls, tag: str, uid: bool, criteria: SearchKey,
           keys: tuple[tuple[SortKey, bool], ...] | None, uids: Iterable[int]) -> Context:
        return cls(tag, uid, criteria, keys, array("I", uids), by_message_alone(criteria))

    @property
    def ordered(self) -> bool:
        return self.keys is not None


Number = Callable[[int], int]


class Contexts:
    """The updating searches of one selected mailbox (see the module docstring)."""

    def __init__(self, *, max_contexts: int = MAX_CONTEXTS, max_kept: int = MAX_KEPT) -> None:
        self.max_contexts = max_contexts
        self.max_kept = max_kept
        self._contexts: dict[str, Context] = {}

    def __bool__(self) -> bool:
        return bool(self._contexts)

    def __iter__(self) -> Iterator[Context]:
        return iter(list(self._contexts.values()))

    def __contains__(self, tag: object) -> bool:
        return tag in self._contexts

    def refusal(self, count: int) -> str | None:
        """Why a new context with ``count`` results cannot be kept, or None."""
        if len(self._contexts) >= self.max_contexts:
            return f"Too many updating searches (at most {self.max_contexts})"
        if count > self.max_kept:
            return f"Result too large to keep updated (at most {self.max_kept} messages)"
        return None

    def add(self, context: Context) -> None:
        if context.tag in self._contexts:
            raise ValueError(f"tag {context.tag!r} is in use")  # the caller checks first
        self._contexts[context.tag] = context

    def cancel(self, tags: Iterable[str]) -> None:
        """Forget the contexts tagged ``tags`` (unknown tags are ignored: the server may
        have dropped one with NOUPDATE just before)."""
        for tag in tags:
            self._contexts.pop(tag, None)

    def expunged(self, uids: Iterable[int], seq_of: Number) -> list[ESearchData]:
        """REMOVEFROM for each context holding one of ``uids``, to send before the
        EXPUNGE (or VANISHED) responses while ``seq_of`` still knows them."""
        gone = set(uids)
        out: list[ESearchData] = []
        for context in self:
            if not gone.intersection(context.uids):
                continue
            new = [u for u in context.uids if u not in gone]
            update = self.changes(context, new, seq_of)
            if update is not None:
                out.append(update)
        return out

    def changes(self, context: Context, new: Sequence[int], seq_of: Number,
                ) -> ESearchData | None:
        """The ESEARCH that turns the client's copy of ``context`` into ``new`` (REMOVEFROM
        first, then ADDTO), or None when nothing changed; ``context`` holds ``new`` after.

        ``seq_of`` numbers the messages of a context that is not by UID; every UID of the
        old and the new result must be announced to the client at this point."""
        removals, additions = diff(context.uids, new, ordered=context.ordered)
        context.uids = array("I", new)
        if not removals and not additions:
            return None

        def number(uid: int) -> int:
            return uid if context.uid else seq_of(uid)

        updates: list[ContextUpdate] = []
        for kind, pairs in (("REMOVEFROM", removals), ("ADDTO", additions)):
            if pairs:
                updates.append(ContextUpdate(kind, tuple(
                    (position, _numbered(members, number, position == 0))
                    for position, members in pairs)))
        return ESearchData(context.tag, context.uid, updates=tuple(updates))

    def drop(self, tag: str) -> None:
        self._contexts.pop(tag, None)


def _numbered(uids: Sequence[int], number: Number, unordered: bool) -> SequenceSet:
    numbers = [number(u) for u in uids]
    return SequenceSet.from_values(numbers) if unordered else ordered_set(numbers)
