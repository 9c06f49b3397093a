"""Reading body sections from blobs: which blobs a window needs (checked against the
splitter's reader over the corpus), section specifiers, and the batch reader."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from director.errors import BlobUnavailable
from imapd.bodies import BodyReader, blobs_for_window, locate_spec, needs_skeleton, slice_window
from imapd.fetchatts import BodySection, Partial, Section, SectionText
from metadata.flags import Flags
from metadata.mimetree import parse
from metadata.records import MessageEntry
from metadata.sections import imap_view, section_map
from metadata.splitter import parse_skeleton, read_imap_range, split
from tests.corpus_features import feature_rows
from tests.imapd_support import ATTACHMENT, CORPUS, MemoryBlobs, corpus


def _corpus_with_blobs() -> list[str]:
    picked = [f"{r['source']}/{r['path']}" for r in feature_rows()
              if "attachment" in r["features"] and int(r["bytes"]) < 300_000]
    return picked[:25]


@pytest.mark.parametrize("name", _corpus_with_blobs())
def test_the_window_needs_exactly_the_blobs_the_reader_uses(name: str) -> None:
    """For every section of the message and random windows, reading with only the blobs
    blobs_for_window names gives the same octets as reading with all of them; windows
    that lie before a blob do not name it."""
    raw = (CORPUS / name).read_bytes()
    stored = split(raw, threshold=256)
    skeleton = parse_skeleton(stored.skeleton_bytes)
    sections = section_map(stored.tree or parse(raw))
    rng = random.Random(name)
    for _spec, section in sections.sections():
        if section is None:
            continue
        windows = [(0, None), (0, 1)] + [
            (rng.randrange(section.vsize + 2), rng.choice([None, 1, 100, 5000]))
            for _ in range(4)]
        for origin, count in windows:
            needed = blobs_for_window(skeleton, section, origin, count)
            subset = {bid: stored.blobs[bid] for bid in needed}
            got = read_imap_range(skeleton, subset, section, origin, count)
            assert got == read_imap_range(skeleton, stored.blobs, section, origin, count)


def test_a_header_window_needs_no_blob() -> None:
    """The top of a message with a large attachment needs no part blob."""
    raw = corpus(ATTACHMENT)
    stored = split(raw)
    skeleton = parse_skeleton(stored.skeleton_bytes)
    whole = section_map(stored.tree or parse(raw)).locate("")
    assert whole is not None
    assert blobs_for_window(skeleton, whole, 0, 200) == ()
    assert blobs_for_window(skeleton, whole) == tuple(stored.blobs)
    assert blobs_for_window(skeleton, whole, whole.vsize + 5, 10) == ()


@pytest.mark.parametrize(("section", "spec"), [
    (Section(), ""),
    (Section(text=SectionText.HEADER), "HEADER"),
    (Section(text=SectionText.TEXT), "TEXT"),
    (Section((2,)), "2"),
    (Section((2, 1), SectionText.MIME), "2.1.MIME"),
    (Section((3,), SectionText.HEADER_FIELDS, ("SUBJECT",)), "3.HEADER"),
    (Section((), SectionText.HEADER_FIELDS_NOT, ("TO",)), "HEADER"),
])
def test_locate_spec(section: Section, spec: str) -> None:
    """HEADER.FIELDS[.NOT] locate the HEADER they filter; the rest render as written."""
    assert locate_spec(section) == spec


def test_only_top_level_headers_skip_the_skeleton() -> None:
    """Top-level HEADER and HEADER.FIELDS come from PostgreSQL; any other section needs
    the skeleton."""
    top = BodySection(Section(text=SectionText.HEADER_FIELDS, fields=("FROM",)), peek=True)
    assert not needs_skeleton([top, BodySection(Section(text=SectionText.HEADER))])
    assert needs_skeleton([top, BodySection(Section((1,), SectionText.MIME))])
    assert needs_skeleton([BodySection(Section(text=SectionText.TEXT))])


def test_slice_window() -> None:
    """<origin.count> slices; past the end it is empty; no count means to the end."""
    assert slice_window(b"abcdef", 2, 3) == b"cde"
    assert slice_window(b"abcdef", 4, None) == b"ef"
    assert slice_window(b"abcdef", 6, 1) == b""


def _entry(uid: int, raw: bytes, blobs: MemoryBlobs) -> MessageEntry:
    stored = split(raw)
    blobs.data[stored.skeleton_id] = stored.skeleton_bytes
    blobs.data.update(stored.blobs)
    tree = stored.tree or parse(raw)
    return MessageEntry(uid=uid, message_id=uid, flags=Flags(), modseq=1,
                        internaldate=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                        size=len(imap_view(raw)), skeleton_id=stored.skeleton_id,
                        header_block=raw[tree.root.header.start:tree.root.header.end],
                        section_map=section_map(tree).to_bytes())


def test_reader_batches_its_blob_reads() -> None:
    """One get_many for the skeletons and one for the parts serve a whole batch, whole
    messages and partial parts alike."""

    async def body() -> None:
        blobs = MemoryBlobs()
        raws = [corpus(ATTACHMENT), b"Subject: small\r\n\r\nhello\r\n"]
        entries = [_entry(n, raw, blobs) for n, raw in enumerate(raws, 1)]
        calls: list[int] = []
        original = blobs.get_many

        async def counting(ids: object) -> dict[str, bytes]:
            calls.append(1)
            return await original(ids)  # type: ignore[arg-type]

        blobs.get_many = counting  # type: ignore[method-assign]
        whole = BodySection(Section(), peek=True)
        part = BodySection(Section((1,)), peek=True, partial=Partial(0, 10))
        got = await BodyReader(blobs).read(entries, [whole, part])
        assert len(calls) == 2
        assert got[1, whole] == imap_view(raws[0]) and got[2, whole] == raws[1]
        assert got[2, part] == b"hello\r\n"

    asyncio.run(body())


def test_reader_turns_a_short_answer_into_unavailable() -> None:
    """A blob store answering without one of the asked-for blobs is reported as
    BlobUnavailable."""

    class Forgetful(MemoryBlobs):
        async def get_many(self, ids: object) -> dict[str, bytes]:
            return {}

    async def body() -> None:
        blobs = Forgetful()
        entry = _entry(1, corpus(ATTACHMENT), blobs)
        with pytest.raises(BlobUnavailable):
            await BodyReader(blobs).read([entry], [BodySection(Section(), peek=True)])

    asyncio.run(body())
