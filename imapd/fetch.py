"""FETCH: which metadata each request needs, and the response items for one message.

:func:`plan_fetch` looks at the requested attributes once per command and decides what to
read: flags, dates, sizes, ENVELOPE, BODY/BODYSTRUCTURE and the top-level header come from
PostgreSQL (pre-rendered at delivery); only body sections other than the top-level header
need the skeleton and section map (and then blobs, see :mod:`imapd.bodies`).
:func:`fetch_items` then turns one stored entry plus its body octets into response items,
in the order the client asked for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imapd.bodies import BinaryAtt, needs_skeleton
from imapd.errors import ImapdError
from imapd.fetchatts import BinarySection, BinarySize, BodySection, FetchAtt, FetchItem
from imapd.response import (
    FetchDate,
    FetchFlags,
    FetchLiteral,
    FetchModSeq,
    FetchNumber,
    FetchRaw,
)
from imapd.response import (
    FetchItem as ResponseItem,
)
from metadata.flags import Flags
from metadata.records import MessageEntry
from runtime import errors as kinds

__all__ = ["FetchPlan", "Unsupported", "fetch_items", "flag_names", "plan_fetch"]


class Unsupported(ImapdError, kinds.InvalidInput):
    """The client asked for something this server does not offer (answered BAD)."""


@dataclass(frozen=True)
class FetchPlan:
    """What one FETCH command reads and returns.

    :ivar atts: the attributes to answer, in order (UID first when a UID FETCH did not ask).
    :ivar items: the cached columns to read (names of ``metadata.messages.FETCH_ITEMS``).
    :ivar bodies: the body sections among ``atts``.
    :ivar sets_seen: answering sets ``\\Seen`` (in a read-write mailbox).
    :ivar binaries: the BINARY and BINARY.SIZE items among ``atts`` (RFC 3516).
    """

    atts: tuple[FetchAtt, ...]
    items: frozenset[str]
    bodies: tuple[BodySection, ...]
    sets_seen: bool
    binaries: tuple[BinarySection | BinarySize, ...] = ()


_ITEM_COLUMNS = {
    FetchItem.ENVELOPE: "envelope",
    FetchItem.BODYSTRUCTURE: "bodystructure",
    FetchItem.BODY: "body",
}


def plan_fetch(atts: tuple[FetchAtt, ...], *, uid: bool, changedsince: int | None) -> FetchPlan:
    """Plan a FETCH."""
    ordered = list(atts)
    if uid and FetchItem.UID not in ordered:
        ordered.insert(0, FetchItem.UID)
    if changedsince is not None and FetchItem.MODSEQ not in ordered:
        ordered.append(FetchItem.MODSEQ)  # RFC 7162 3.1.4.1
    items: set[str] = set()
    bodies: list[BodySection] = []
    binaries: list[BinarySection | BinarySize] = []
    for att in ordered:
        if isinstance(att, FetchItem) and att in _ITEM_COLUMNS:
            items.add(_ITEM_COLUMNS[att])
        elif isinstance(att, BodySection):
            bodies.append(att)
        elif isinstance(att, BinarySection | BinarySize):
            binaries.append(att)
    if bodies:
        items.add("header")
        if needs_skeleton(bodies):
            items.update(("skeleton", "sections"))
    if binaries:
        items.update(("skeleton", "sections"))
    sets_seen = any(isinstance(att, BodySection | BinarySection) and att.sets_seen
                    for att in ordered)
    return FetchPlan(tuple(ordered), frozenset(items), tuple(bodies), sets_seen,
                     tuple(binaries))


def flag_names(flags: Flags, recent: bool) -> tuple[str, ...]:
    """The FLAGS list of a message: stored flags, plus ``\\Recent`` when it is recent to
    this session."""
    names = flags.names()
    return (*names, "\\Recent") if recent else names


def fetch_items(plan: FetchPlan, entry: MessageEntry, bodies: Mapping[tuple[int, BodySection],
                bytes], *, recent: bool, add_flags: bool = False,
                binaries: Mapping[tuple[int, BinaryAtt], bytes | int] | None = None,
                ) -> tuple[ResponseItem, ...]:
    """The response items for ``entry``.

    :param bodies: body octets by ``(uid, attribute)`` from :class:`imapd.bodies.BodyReader`.
    :param add_flags: append FLAGS although not asked (``\\Seen`` was just set by fetching).
    :param binaries: BINARY octets and BINARY.SIZE sizes by ``(uid, attribute)``
        (:meth:`imapd.bodies.BodyReader.read_binary`).
    """
    out: list[ResponseItem] = []
    for att in plan.atts:
        if isinstance(att, BodySection):
            out.append(FetchLiteral(att.response_name, bodies[entry.uid, att]))
            continue
        if isinstance(att, BinarySection | BinarySize):
            value = binaries[entry.uid, att] if binaries is not None else None
            if isinstance(att, BinarySize) and isinstance(value, int):
                out.append(FetchNumber(att.response_name, value))
            elif isinstance(att, BinarySection) and isinstance(value, bytes):
                # RFC 3516 4.2: octets with NUL go as literal8 (~{n}).
                out.append(FetchLiteral(att.response_name, value, binary=b"\0" in value))
            else:
                raise ValueError(f"no BINARY data read for {att!r} of UID {entry.uid}")
            continue
        match att:
            case FetchItem.FLAGS:
                out.append(FetchFlags(flag_names(entry.flags, recent)))
            case FetchItem.UID:
                out.append(FetchNumber("UID", entry.uid))
            case FetchItem.INTERNALDATE:
                out.append(FetchDate(entry.internaldate))
            case FetchItem.RFC822_SIZE:
                out.append(FetchNumber("RFC822.SIZE", entry.size))
            case FetchItem.MODSEQ:
                out.append(FetchModSeq(entry.modseq))
            case FetchItem.ENVELOPE:
                out.append(FetchRaw("ENVELOPE", entry.envelope or b"NIL"))
            case FetchItem.BODYSTRUCTURE:
                out.append(FetchRaw("BODYSTRUCTURE", entry.bodystructure or b"NIL"))
            case FetchItem.BODY:
                out.append(FetchRaw("BODY", entry.body or b"NIL"))
            case _:
                raise Unsupported(f"cannot answer {att!r}")
    if add_flags and FetchItem.FLAGS not in plan.atts:
        out.append(FetchFlags(flag_names(entry.flags, recent)))
    return tuple(out)
