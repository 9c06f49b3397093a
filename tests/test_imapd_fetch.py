"""FETCH planning and response items."""

from __future__ import annotations

import datetime as dt

import pytest

from imapd import fetchatts
from imapd.fetch import fetch_items, flag_names, plan_fetch
from imapd.fetchatts import FetchItem
from imapd.response import FetchFlags, FetchLiteral, FetchModSeq, FetchNumber, FetchRaw
from metadata.flags import SEEN, Flags
from metadata.records import MessageEntry


def test_metadata_only_fetch_reads_no_skeleton() -> None:
    """FLAGS/ENVELOPE/BODYSTRUCTURE read their columns; a top-level header reads the
    stored header only; any other section also needs skeleton and section map."""
    plan = plan_fetch(fetchatts.parse(b"(FLAGS ENVELOPE BODYSTRUCTURE)"), uid=False,
                      changedsince=None)
    assert plan.items == {"envelope", "bodystructure"} and not plan.sets_seen
    plan = plan_fetch(fetchatts.parse(b"BODY.PEEK[HEADER.FIELDS (FROM)]"), uid=False,
                      changedsince=None)
    assert plan.items == {"header"} and not plan.sets_seen
    plan = plan_fetch(fetchatts.parse(b"BODY[1]"), uid=False, changedsince=None)
    assert plan.items == {"header", "skeleton", "sections"} and plan.sets_seen


def test_uid_and_modseq_are_added_when_required() -> None:
    """UID FETCH answers UID first though not asked; CHANGEDSINCE adds MODSEQ."""
    plan = plan_fetch(fetchatts.parse(b"FLAGS"), uid=True, changedsince=5)
    assert plan.atts == (FetchItem.UID, FetchItem.FLAGS, FetchItem.MODSEQ)


def test_binary_reads_skeleton_and_sections_and_sets_seen_unless_peek() -> None:
    """BINARY and BINARY.SIZE need the skeleton and the section map; BINARY sets
    \\Seen, BINARY.PEEK and BINARY.SIZE do not."""
    plan = plan_fetch(fetchatts.parse(b"(BINARY.PEEK[1] BINARY.SIZE[2])"), uid=False,
                      changedsince=None)
    assert plan.items == {"skeleton", "sections"} and not plan.sets_seen
    assert len(plan.binaries) == 2 and not plan.bodies
    assert plan_fetch(fetchatts.parse(b"BINARY[1]"), uid=False, changedsince=None).sets_seen


def test_binary_items_use_literal8_only_for_nul() -> None:
    """BINARY octets with a NUL are a literal8 (~{n}), others a plain literal; sizes are
    numbers; a partial BINARY answers as BINARY[...]<origin> (RFC 3516 4.2)."""
    entry = MessageEntry(uid=3, message_id=1, flags=Flags(), modseq=1,
                         internaldate=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), size=9)
    plan = plan_fetch(fetchatts.parse(b"(BINARY.PEEK[1] BINARY[2]<4.3> BINARY.SIZE[1])"),
                      uid=False, changedsince=None)
    one, two, size = plan.binaries
    items = fetch_items(plan, entry, {}, recent=False,
                        binaries={(3, one): b"a\0b", (3, two): b"xyz", (3, size): 3})
    assert items == (FetchLiteral("BINARY[1]", b"a\0b", binary=True),
                     FetchLiteral("BINARY[2]<4>", b"xyz"), FetchNumber("BINARY.SIZE[1]", 3))
    with pytest.raises(ValueError):
        fetch_items(plan, entry, {}, recent=False)


def test_items_in_the_order_asked() -> None:
    """Items come in the order of the request; \\Recent joins FLAGS when recent; FLAGS
    is appended when fetching just set \\Seen."""
    entry = MessageEntry(uid=7, message_id=1, flags=Flags(SEEN, ("$A",)), modseq=12,
                         internaldate=dt.datetime(2024, 1, 2, tzinfo=dt.UTC), size=99,
                         envelope=b"(env)")
    atts = fetchatts.parse(b"(RFC822.SIZE ENVELOPE BODY.PEEK[]<0.5> MODSEQ)")
    plan = plan_fetch(atts, uid=True, changedsince=None)
    body = plan.bodies[0]
    items = fetch_items(plan, entry, {(7, body): b"hello"}, recent=True, add_flags=True)
    assert items == (FetchNumber("UID", 7), FetchNumber("RFC822.SIZE", 99),
                     FetchRaw("ENVELOPE", b"(env)"), FetchLiteral("BODY[]<0>", b"hello"),
                     FetchModSeq(12), FetchFlags(("\\Seen", "$A", "\\Recent")))
    assert flag_names(Flags(), recent=False) == ()
