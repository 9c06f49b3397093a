"""Message text for FETCH ``BODY[...]`` / ``RFC822*`` and POP3 RETR/TOP, read from blobs.

What PostgreSQL already holds is used first: the top-level header (``BODY[HEADER]``,
``RFC822.HEADER``, ``HEADER.FIELDS``) comes from ``messages.header_block`` without any
blob.  Everything else needs the message's *skeleton* (one small blob) and then only the
part blobs that the requested window overlaps: :func:`metadata.splitter.blobs_for_window`
walks the skeleton's segments counting IMAP-view octets with the sizes the skeleton records,
so ``BODY[1]<0.2048>`` of a message with a 20 MB attachment never fetches the attachment.
BINARY (RFC 3516) is read the same way and decoded by :mod:`imapd.binary`.

:class:`BodyReader` serves a whole batch of FETCH entries with two round trips to the blob
store at most: every skeleton at once, then every part blob the batch needs at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from director.errors import BlobUnavailable
from imapd import binary
from imapd.fetchatts import BinarySection, BinarySize, BodySection, Section, SectionText
from imapd.headerfields import filter_fields
from metadata.records import MessageEntry
from metadata.sections import SectionMap, SectionMapError, SectionRange, imap_view
from metadata.splitter import (
    Skeleton,
    blobs_for_range,
    blobs_for_window,
    parse_skeleton,
    read_imap_range,
    read_range,
)

__all__ = [
    "BinaryAtt",
    "BlobSource",
    "BodyReader",
    "blobs_for_window",
    "locate_spec",
    "needs_skeleton",
    "slice_window",
]


BinaryAtt = BinarySection | BinarySize


class BlobSource(Protocol):
    """What reading bodies needs from the blob store (``director.client.BlobClient``)."""

    async def get(self, blob_id: str) -> bytes: ...

    async def get_many(self, ids: Iterable[str]) -> dict[str, bytes]: ...


def slice_window(data: bytes, origin: int, count: int | None) -> bytes:
    """``<origin.count>`` of already-converted octets (empty past the end)."""
    if origin >= len(data):
        return b""
    return data[origin:] if count is None else data[origin:origin + count]


def locate_spec(section: Section) -> str:
    """The :meth:`SectionMap.locate` specifier of a section; HEADER.FIELDS[.NOT] read the
    HEADER they filter."""
    numbers = ".".join(str(n) for n in section.part)
    text = section.text
    if text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
        word = "HEADER"
    else:
        word = text.value if text is not None else ""
    if numbers and word:
        return f"{numbers}.{word}"
    return numbers or word


def _top_header(section: Section) -> bool:
    return not section.part and section.text in (
        SectionText.HEADER, SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT)


def needs_skeleton(atts: Iterable[BodySection]) -> bool:
    """Whether any of ``atts`` needs more than the stored top-level header."""
    return any(not _top_header(att.section) for att in atts)


def _filtered(header: bytes, section: Section) -> bytes:
    return filter_fields(header, section.fields,
                         exclude=section.text is SectionText.HEADER_FIELDS_NOT)


def _section_map(entry: MessageEntry, skeleton: Skeleton) -> SectionMap:
    """The entry's stored section map, checked against its skeleton.

    :raises SectionMapError: it is damaged, or describes another message.
    """
    sections = SectionMap.from_bytes(entry.section_map or b"")
    if sections.entries[0].end != skeleton.size:
        # Its ranges would read outside the message (or miss its end).
        raise SectionMapError(f"section map of UID {entry.uid} covers "
                              f"{sections.entries[0].end} bytes, its message {skeleton.size}")
    return sections


@dataclass(frozen=True)
class _Plan:
    """How one (message, attribute) pair is answered."""

    range: SectionRange | None
    whole: bool
    """Read the whole range (then filter or slice in memory) rather than a window."""


class BodyReader:
    """Reads body sections for batches of FETCH entries (see the module docstring).

    Entries must carry ``skeleton_id``, ``section_map`` and ``header_block``
    (``Messages.fetch(..., items={"skeleton", "sections", "header"})``).
    """

    def __init__(self, blobs: BlobSource) -> None:
        self.blobs = blobs

    async def read(self, entries: Sequence[MessageEntry], atts: Sequence[BodySection],
                   ) -> dict[tuple[int, BodySection], bytes]:
        """The IMAP-view octets of every attribute of every entry, by ``(uid, att)``.

        A section that names no part is answered with empty octets.

        :raises metadata.splitter.SkeletonError: a stored skeleton or blob is corrupt.
        :raises metadata.sections.SectionMapError: a stored section map is corrupt or not
            the skeleton's.
        """
        result: dict[tuple[int, BodySection], bytes] = {}
        deep = [att for att in atts if not _top_header(att.section)]
        for entry in entries:
            header = entry.header_block or b""
            for att in atts:
                if _top_header(att.section):
                    data = header
                    if att.section.fields:
                        data = _filtered(data, att.section)
                    result[entry.uid, att] = self._window(imap_view(data), att)
        if not deep or not entries:
            return result
        skeletons = await self._skeletons(entries)
        plans: dict[tuple[int, BodySection], _Plan] = {}
        wanted: dict[str, None] = {}
        for entry in entries:
            skeleton = skeletons[entry.uid]
            sections = _section_map(entry, skeleton)
            for att in deep:
                rng = sections.locate(locate_spec(att.section))
                whole = bool(att.section.fields)
                plans[entry.uid, att] = _Plan(rng, whole)
                if rng is None:
                    continue
                if whole or att.partial is None:
                    ids = blobs_for_window(skeleton, rng)
                else:
                    ids = blobs_for_window(skeleton, rng, att.partial.origin, att.partial.count)
                wanted.update(dict.fromkeys(ids))
        parts = await self._parts(wanted)
        for entry in entries:
            skeleton = skeletons[entry.uid]
            for att in deep:
                plan = plans[entry.uid, att]
                result[entry.uid, att] = self._answer(skeleton, parts, plan, att)
        return result

    async def read_binary(self, entries: Sequence[MessageEntry], atts: Sequence[BinaryAtt],
                          ) -> dict[tuple[int, BinaryAtt], bytes | int]:
        """``BINARY[...]`` octets and ``BINARY.SIZE[...]`` sizes of every attribute of
        every entry, by ``(uid, att)`` (see :mod:`imapd.binary`): the skeletons, then (if
        a part's MIME header is not kept in its skeleton) header blobs, then only the
        blobs the decoding needs.  A part that does not exist is empty (size 0).

        :raises imapd.binary.UnknownCte: a part is in an encoding this server cannot undo.
        :raises metadata.splitter.SkeletonError: stored data is corrupt.
        """
        result: dict[tuple[int, BinaryAtt], bytes | int] = {}
        if not entries or not atts:
            return result
        skeletons = await self._skeletons(entries)
        numbers = list(dict.fromkeys(att.part for att in atts))
        located: dict[tuple[int, tuple[int, ...]], tuple[SectionRange | None,
                                                          SectionRange | None]] = {}
        wanted: dict[str, None] = {}
        for entry in entries:
            skeleton = skeletons[entry.uid]
            sections = _section_map(entry, skeleton)
            for part in numbers:
                body, header = located[entry.uid, part] = binary.locate_binary(sections, part)
                if header is not None:
                    wanted.update(dict.fromkeys(
                        blobs_for_range(skeleton, header.start, header.end)))
        parts = await self._parts(wanted)  # nearly always none: headers stay inline
        encodings: dict[tuple[int, tuple[int, ...]], str] = {}
        wanted = {}
        for entry in entries:
            skeleton = skeletons[entry.uid]
            for part in numbers:
                body, header = located[entry.uid, part]
                if body is None:
                    continue
                encoding = "" if header is None else binary.transfer_encoding(
                    read_range(skeleton, parts, header.start, header.end))
                binary.check(encoding)
                encodings[entry.uid, part] = encoding
                for att in atts:
                    if att.part == part:
                        wanted.update(dict.fromkeys(binary.blobs_needed(
                            skeleton, body, encoding,
                            size_only=isinstance(att, BinarySize))))
        parts.update(await self._parts(wanted.keys() - parts.keys()))
        for entry in entries:
            skeleton = skeletons[entry.uid]
            done: dict[tuple[int, ...], bytes] = {}
            for att in atts:
                body, _ = located[entry.uid, att.part]
                if body is None:
                    result[entry.uid, att] = 0 if isinstance(att, BinarySize) else b""
                    continue
                encoding = encodings[entry.uid, att.part]
                if isinstance(att, BinarySize):
                    result[entry.uid, att] = (
                        len(done[att.part]) if att.part in done
                        else binary.decoded_size(skeleton, parts, body, encoding))
                    continue
                data = done.get(att.part)
                if data is None:
                    data = done[att.part] = binary.decoded(skeleton, parts, body, encoding)
                if att.partial is not None:
                    data = slice_window(data, att.partial.origin, att.partial.count)
                result[entry.uid, att] = data
        return result

    async def _parts(self, ids: Iterable[str]) -> dict[str, bytes]:
        """The stored bytes of blobs ``ids``, all of them.

        :raises BlobUnavailable: one could not be read.
        """
        wanted = list(ids)
        if not wanted:
            return {}
        parts = await self.blobs.get_many(wanted)
        missing = set(wanted) - parts.keys()
        if missing:
            raise BlobUnavailable(f"blob {min(missing)} could not be read")
        return parts

    async def read_message(self, entry: MessageEntry) -> bytes:
        """The whole message as IMAP and POP3 send it (CRLF line ends, NUL as 0x80)."""
        whole = BodySection(Section(), peek=True)
        return (await self.read([entry], [whole]))[entry.uid, whole]

    async def _skeletons(self, entries: Sequence[MessageEntry]) -> dict[int, Skeleton]:
        if any(not entry.skeleton_id for entry in entries):
            raise ValueError("FETCH entries were read without their skeleton id")
        ids = {entry.skeleton_id for entry in entries if entry.skeleton_id}
        stored = await self.blobs.get_many(ids)
        missing = ids - stored.keys()
        if missing:
            raise BlobUnavailable(f"skeleton {min(missing)} could not be read")
        parsed = {blob_id: parse_skeleton(stored[blob_id]) for blob_id in ids}
        return {entry.uid: parsed[entry.skeleton_id] for entry in entries
                if entry.skeleton_id is not None}

    @staticmethod
    def _window(data: bytes, att: BodySection) -> bytes:
        if att.partial is None:
            return data
        return slice_window(data, att.partial.origin, att.partial.count)

    def _answer(self, skeleton: Skeleton, parts: Mapping[str, bytes], plan: _Plan,
                att: BodySection) -> bytes:
        if plan.range is None:
            return b""
        if plan.whole:
            header = read_imap_range(skeleton, parts, plan.range)
            return self._window(_filtered(header, att.section), att)
        if att.partial is None:
            return read_imap_range(skeleton, parts, plan.range)
        return read_imap_range(skeleton, parts, plan.range, att.partial.origin,
                               att.partial.count)

