"""Split a message into a skeleton and content-addressed blobs, and put it back.

Why: a PDF mailed to a thousand people should be stored once. Every leaf body of at
least ``threshold`` bytes becomes a blob whose id is computed from its stored bytes
(the SHA-256 by default; delivery passes the blob store's own id function, a keyed one,
so the store need not hash them again);
everything else (headers, boundaries, preambles, epilogues, small parts) stays in the
*skeleton*, itself one small blob. ``reassemble(split(m)) == m`` for every message,
byte for byte: nothing is normalised, and a message the MIME parser cannot make sense
of is kept as one segment.

Skeleton format (version 1), all integers unsigned LEB128 varints::

    "OMSK" 0x01 flags:u8 size vsize sha256(message):32 count segment*
    segment = 0x00 length bytes                       inline bytes
            | 0x01 digest:32 length vlength bits:u8   a blob holding the bytes as is
            | 0x02 digest:32 length vlength bits:u8 stored_length line_length eol:u8
                                                      a base64 body stored decoded

``length`` is how many message bytes the segment stands for, ``vlength`` how many
octets they take in the IMAP view (bare LF sent as CRLF); ``bits`` bit 0 says the
segment's last byte is CR, bit 1 that it starts with an LF right after a CR, so a
range read can skip blobs it does not need and still count octets exactly. The
message is the concatenation of its segments; flags bit 0 marks a message kept
opaque.

Base64 bodies (the stretch goal): when a base64 body is exactly what re-encoding its
decoded bytes with one line length and one line ending gives, the blob holds the
decoded bytes and the segment the recipe. The same attachment sent with CRLF or LF,
76- or 72-column lines, then dedups, and takes a quarter less space. The round trip is
verified at split time; anything else is stored as received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from metadata.bodystructure import part_data
from metadata.errors import CorruptMessage
from metadata.mimetree import MimeTree, PartKind, iter_parts, parse
from metadata.sections import SectionRange, imap_view

__all__ = [
    "DEFAULT_THRESHOLD",
    "Base64Recipe",
    "BlobSegment",
    "InlineSegment",
    "Segment",
    "Skeleton",
    "SkeletonError",
    "SplitMessage",
    "blob_id",
    "blobs_for_range",
    "blobs_for_window",
    "iter_range",
    "parse_skeleton",
    "read_imap_range",
    "read_range",
    "reassemble",
    "split",
]

#: Leaf bodies of at least this many bytes become blobs.
DEFAULT_THRESHOLD = 4096

_MAGIC = b"OMSK\x01"
_FLAG_OPAQUE = 0x01
_BIT_ENDS_CR = 0x01
_BIT_LF_AFTER_CR = 0x02
_EOL_CRLF = 0x01
_EOL_FINAL = 0x02


class SkeletonError(CorruptMessage):
    """Stored skeleton or blobs do not make up a valid message (corruption: never serve)."""


def blob_id(data: bytes) -> str:
    """The content address of stored bytes: lowercase hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Base64Recipe:
    """How to re-encode decoded bytes into the exact base64 text received."""

    line_length: int
    crlf: bool
    final_eol: bool

    def encode(self, decoded: bytes) -> bytes:
        """The base64 text this recipe describes."""
        text = base64.b64encode(decoded)
        eol = b"\r\n" if self.crlf else b"\n"
        n = self.line_length
        out = eol.join([text[i : i + n] for i in range(0, len(text), n)])
        return out + eol if self.final_eol else out

    def describes(self, body: bytes, text: bytes) -> bool:
        """Whether ``body`` is ``text`` (base64 without line ends) cut by this recipe,
        i.e. ``encode`` would give ``body`` back: checked with a few strided slices
        instead of building the text again (an attachment has ~100,000 lines).

        ``text`` must hold no CR or LF (strict base64 decoding guarantees it).
        """
        eol = b"\r\n" if self.crlf else b"\n"
        n = self.line_length
        full, rest = divmod(len(text), n)
        # Line ends that follow a full line; then one after a short last line.
        after_full = full if (rest or self.final_eol) else full - 1
        after_rest = 1 if rest and self.final_eol else 0
        if len(body) != len(text) + (max(after_full, 0) + after_rest) * len(eol):
            return False
        stride = n + len(eol)
        for k, byte in enumerate(eol):
            if body[n + k :: stride][:after_full] != bytes([byte]) * after_full:
                return False
        return not after_rest or body.endswith(eol)


@dataclass(frozen=True, slots=True)
class InlineSegment:
    """Message bytes kept in the skeleton."""

    data: bytes

    @property
    def length(self) -> int:
        """Message bytes this segment stands for."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class BlobSegment:
    """Message bytes kept in a blob (decoded, when ``recipe`` is set)."""

    blob_id: str
    length: int
    vlength: int
    ends_cr: bool
    lf_after_cr: bool
    recipe: Base64Recipe | None = None
    stored_length: int = -1

    def expand(self, stored: bytes) -> bytes:
        """The message bytes, from the blob's stored bytes.

        The bytes are not checked against the id here: only the blob store can compute
        its (keyed) ids, and it verified every blob it returned against its id before
        (``director.blobreader``); :func:`reassemble` also checks the whole message
        against the skeleton's SHA-256.

        :raises SkeletonError: if the stored bytes do not have this segment's length.
        """
        data = stored if self.recipe is None else self.recipe.encode(stored)
        if len(data) != self.length:
            raise SkeletonError(
                f"blob {self.blob_id} expands to {len(data)} bytes, not {self.length}"
            )
        return data


Segment = InlineSegment | BlobSegment


@dataclass(frozen=True, slots=True)
class Skeleton:
    """A message as a sequence of segments."""

    segments: tuple[Segment, ...]
    size: int
    vsize: int
    sha256: bytes
    opaque: bool = False

    def blob_ids(self) -> tuple[str, ...]:
        """Distinct blob ids, in message order."""
        return tuple(dict.fromkeys(s.blob_id for s in self.segments if isinstance(s, BlobSegment)))

    def to_bytes(self) -> bytes:
        """The versioned binary form (see the module docstring)."""
        out = bytearray(_MAGIC)
        out.append(_FLAG_OPAQUE if self.opaque else 0)
        _varint(self.size, out)
        _varint(self.vsize, out)
        out += self.sha256
        _varint(len(self.segments), out)
        for seg in self.segments:
            if isinstance(seg, InlineSegment):
                out.append(0)
                _varint(len(seg.data), out)
                out += seg.data
                continue
            out.append(1 if seg.recipe is None else 2)
            out += bytes.fromhex(seg.blob_id)
            _varint(seg.length, out)
            _varint(seg.vlength, out)
            out.append(
                (_BIT_ENDS_CR if seg.ends_cr else 0) | (_BIT_LF_AFTER_CR if seg.lf_after_cr else 0)
            )
            if seg.recipe is not None:
                _varint(seg.stored_length, out)
                _varint(seg.recipe.line_length, out)
                out.append(
                    (_EOL_CRLF if seg.recipe.crlf else 0)
                    | (_EOL_FINAL if seg.recipe.final_eol else 0)
                )
        return bytes(out)


@dataclass(frozen=True, slots=True)
class SplitMessage:
    """The result of :func:`split`: what delivery writes.

    :ivar skeleton_id: the skeleton's own content address (it is stored as a blob too).
    :ivar named_by: the function that computed the ids (of the blobs and the skeleton).
    """

    skeleton: Skeleton
    skeleton_bytes: bytes
    blobs: Mapping[str, bytes]
    tree: MimeTree | None
    skeleton_id: str
    named_by: Callable[[bytes], str]

    @property
    def named_blobs(self) -> dict[str, bytes]:
        """Everything to store, id -> bytes: the skeleton, then the part blobs."""
        return {self.skeleton_id: self.skeleton_bytes, **self.blobs}


# --- encoding helpers --------------------------------------------------------------


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise SkeletonError("truncated skeleton")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SkeletonError("truncated skeleton")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
            if shift > 63:
                raise SkeletonError("varint too long")


def parse_skeleton(data: bytes) -> Skeleton:
    """Read a skeleton written by :meth:`Skeleton.to_bytes`.

    :raises SkeletonError: if *data* is not a well-formed skeleton.
    """
    r = _Reader(data)
    if r.take(len(_MAGIC)) != _MAGIC:
        raise SkeletonError("not an objmail skeleton (or an unknown version)")
    flags = r.byte()
    size = r.varint()
    vsize = r.varint()
    digest = r.take(32)
    count = r.varint()
    segments: list[Segment] = []
    total = 0
    for _ in range(count):
        kind = r.byte()
        if kind == 0:
            seg: Segment = InlineSegment(r.take(r.varint()))
        elif kind in (1, 2):
            bid = r.take(32).hex()
            length = r.varint()
            vlength = r.varint()
            bits = r.byte()
            recipe = None
            stored = length
            if kind == 2:
                stored = r.varint()
                line_length = r.varint()
                eol = r.byte()
                if line_length == 0:
                    raise SkeletonError("zero base64 line length")
                recipe = Base64Recipe(line_length, bool(eol & _EOL_CRLF), bool(eol & _EOL_FINAL))
            seg = BlobSegment(
                bid,
                length,
                vlength,
                bool(bits & _BIT_ENDS_CR),
                bool(bits & _BIT_LF_AFTER_CR),
                recipe,
                stored,
            )
        else:
            raise SkeletonError(f"unknown segment type {kind}")
        total += seg.length
        segments.append(seg)
    if r.pos != len(data):
        raise SkeletonError("trailing bytes after skeleton")
    if total != size:
        raise SkeletonError(f"segments add up to {total} bytes, not {size}")
    return Skeleton(tuple(segments), size, vsize, digest, bool(flags & _FLAG_OPAQUE))


# --- split -------------------------------------------------------------------------


def _base64_recipe(body: bytes) -> tuple[Base64Recipe, bytes] | None:
    """The recipe and decoded bytes if *body* is canonical base64, else None."""
    lf = body.find(b"\n")
    if lf < 0:
        line_length, crlf, final_eol = len(body), False, False
    else:
        crlf = lf > 0 and body[lf - 1] == 0x0D
        line_length = lf - 1 if crlf else lf
        final_eol = body.endswith(b"\n")
    if line_length <= 0 or line_length % 4:
        return None
    eol = b"\r\n" if crlf else b"\n"
    text = body.replace(eol, b"")
    try:
        decoded = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None
    recipe = Base64Recipe(line_length, crlf, final_eol)
    # Strict decoding took whole 4-character groups, and each full group is the only
    # encoding of its 3 bytes: only a padded last group can hide other bits.
    tail = len(decoded) % 3
    if tail and base64.b64encode(decoded[-tail:]) != text[-4:]:
        return None
    if not recipe.describes(body, text):
        return None
    return recipe, decoded


def _blob_segment(
    raw: bytes, start: int, end: int, recode_base64: bool, id_of: Callable[[bytes], str]
) -> tuple[BlobSegment, bytes]:
    body = raw[start:end]
    lf_after_cr = body.startswith(b"\n") and start > 0 and raw[start - 1] == 0x0D
    vlength = len(body) + body.count(b"\n") - body.count(b"\r\n") - (1 if lf_after_cr else 0)
    ends_cr = body.endswith(b"\r")
    found = _base64_recipe(body) if recode_base64 else None
    if found is not None:
        recipe, decoded = found
        return (
            BlobSegment(
                id_of(decoded), len(body), vlength, ends_cr, lf_after_cr, recipe, len(decoded)
            ),
            decoded,
        )
    return BlobSegment(
        id_of(body), len(body), vlength, ends_cr, lf_after_cr, None, len(body)
    ), body


def _opaque(
    raw: bytes, threshold: int, id_of: Callable[[bytes], str]
) -> tuple[list[Segment], dict[str, bytes]]:
    if len(raw) < threshold:
        return [InlineSegment(raw)] if raw else [], {}
    seg, stored = _blob_segment(raw, 0, len(raw), False, id_of)
    return [seg], {seg.blob_id: stored}


def split(
    raw: bytes,
    threshold: int = DEFAULT_THRESHOLD,
    *,
    recode_base64: bool = True,
    parser: Callable[[bytes], MimeTree] = parse,
    id_of: Callable[[bytes], str] = blob_id,
) -> SplitMessage:
    """Cut *raw* into a skeleton and blobs (see the module docstring).

    :param threshold: leaf bodies of at least this many bytes become blobs.
    :param recode_base64: store canonical base64 bodies decoded (dedups across MUAs).
    :param parser: the MIME parser (injectable so the opaque fallback can be tested).
    :param id_of: names the blobs and the skeleton (the blob store's id function).
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    tree: MimeTree | None
    try:
        tree = parser(raw)
    except Exception:  # a parser bug must not lose mail: keep the message opaque
        tree = None
    segments: list[Segment] = []
    blobs: dict[str, bytes] = {}
    if tree is None:
        segments, blobs = _opaque(raw, threshold, id_of)
    else:
        pos = 0
        for part in iter_parts(tree.root):
            if part.children or part.kind is PartKind.MESSAGE:
                continue
            start, end = part.body.start, part.body.end
            if end - start < threshold:
                continue
            if start > pos:
                segments.append(InlineSegment(raw[pos:start]))
            recode = (
                recode_base64 and (part_data(part).transfer_encoding or b"").lower() == b"base64"
            )
            seg, stored = _blob_segment(raw, start, end, recode, id_of)
            segments.append(seg)
            blobs[seg.blob_id] = stored
            pos = end
        if pos < len(raw):
            segments.append(InlineSegment(raw[pos:]))
    vsize = len(raw) + raw.count(b"\n") - raw.count(b"\r\n")
    skeleton = Skeleton(
        tuple(segments), len(raw), vsize, hashlib.sha256(raw).digest(), tree is None
    )
    if tree is not None and b"".join(_expand_all(skeleton, blobs)) != raw:
        # Cannot happen unless the parser's offsets are wrong; exactness comes first.
        segments, blobs = _opaque(raw, threshold, id_of)
        skeleton = Skeleton(tuple(segments), len(raw), vsize, skeleton.sha256, True)
        tree = None
    skeleton_bytes = skeleton.to_bytes()
    return SplitMessage(skeleton, skeleton_bytes, blobs, tree, id_of(skeleton_bytes), id_of)


# --- reassembly and range reads ----------------------------------------------------


def _expand_all(skeleton: Skeleton, blobs: Mapping[str, bytes]) -> Iterator[bytes]:
    for seg in skeleton.segments:
        if isinstance(seg, InlineSegment):
            yield seg.data
        else:
            stored = blobs.get(seg.blob_id)
            if stored is None:
                raise SkeletonError(f"missing blob {seg.blob_id}")
            yield seg.expand(stored)


def reassemble(skeleton_bytes: bytes, blobs: Mapping[str, bytes], *, verify: bool = True) -> bytes:
    """The message bytes, exactly as delivered.

    :param verify: check the whole message's SHA-256 (the skeleton records it); the
        blobs are verified by the blob store that returned them.
    :raises SkeletonError: on a corrupt skeleton, a missing or corrupt blob.
    """
    skeleton = parse_skeleton(skeleton_bytes)
    data = b"".join(_expand_all(skeleton, blobs))
    if verify and hashlib.sha256(data).digest() != skeleton.sha256:
        raise SkeletonError("reassembled message fails its hash check")
    return data


def _overlapping(skeleton: Skeleton, start: int, end: int) -> Iterator[tuple[int, Segment]]:
    """Segments meeting ``[start, end)``, with their message offsets."""
    pos = 0
    for seg in skeleton.segments:
        seg_end = pos + seg.length
        if seg_end > start and pos < end:
            yield pos, seg
        if seg_end >= end:
            return
        pos = seg_end


def _check_range(skeleton: Skeleton, start: int, end: int) -> None:
    if not 0 <= start <= end <= skeleton.size:
        raise ValueError(f"range [{start}, {end}) outside a {skeleton.size}-byte message")


def blobs_for_range(skeleton: Skeleton, start: int, end: int) -> tuple[str, ...]:
    """Blob ids needed to read message bytes ``[start, end)``."""
    _check_range(skeleton, start, end)
    return tuple(
        dict.fromkeys(
            seg.blob_id
            for _pos, seg in _overlapping(skeleton, start, end)
            if isinstance(seg, BlobSegment)
        )
    )


def iter_range(
    skeleton: Skeleton, blobs: Mapping[str, bytes], start: int, end: int
) -> Iterator[bytes]:
    """Message bytes ``[start, end)``, a segment at a time; only the blobs it needs
    are looked up in *blobs*."""
    _check_range(skeleton, start, end)
    for pos, seg in _overlapping(skeleton, start, end):
        if isinstance(seg, InlineSegment):
            data = seg.data
        else:
            stored = blobs.get(seg.blob_id)
            if stored is None:
                raise SkeletonError(f"missing blob {seg.blob_id}")
            data = seg.expand(stored)
        lo, hi = max(start - pos, 0), min(end - pos, seg.length)
        if lo < hi:
            yield data[lo:hi]


def read_range(skeleton: Skeleton, blobs: Mapping[str, bytes], start: int, end: int) -> bytes:
    """Message bytes ``[start, end)``."""
    return b"".join(iter_range(skeleton, blobs, start, end))


def blobs_for_window(skeleton: Skeleton, section: SectionRange, origin: int = 0,
                     count: int | None = None) -> tuple[str, ...]:
    """The blob ids :func:`metadata.splitter.read_imap_range` needs to return ``count``
    IMAP-view octets of ``section`` from ``origin`` (all of it when ``count`` is None).

    Whole blobs are measured by their recorded view length, exactly as the reader counts
    them; a blob cut by the section's edge (which section boundaries never do for the
    splitter's own skeletons) makes every later blob of the section count as needed.
    """
    stop = section.vsize if count is None else min(section.vsize, origin + count)
    if origin >= stop:
        return ()
    needed: dict[str, None] = {}
    v = 0
    after_cr = False
    uncertain = False
    for pos, seg in _overlapping(skeleton, section.start, section.end):
        lo = max(section.start - pos, 0)
        hi = min(section.end - pos, seg.length)
        first = pos <= section.start
        if uncertain:
            if isinstance(seg, BlobSegment):
                needed[seg.blob_id] = None
            continue
        if isinstance(seg, BlobSegment):
            if lo == 0 and hi == seg.length:
                width = seg.vlength + (1 if first and seg.lf_after_cr else 0)
                if not (v + width <= origin or v >= stop):
                    needed[seg.blob_id] = None
                v += width
                after_cr = seg.ends_cr
                continue
            if v >= stop:
                break
            needed[seg.blob_id] = None
            uncertain = True
            continue
        if v >= stop:
            break
        data = seg.data[lo:hi]
        v += len(imap_view(data, after_cr=after_cr and not first))
        after_cr = data.endswith(b"\r")
    return tuple(needed)


def read_imap_range(
    skeleton: Skeleton,
    blobs: Mapping[str, bytes],
    section: SectionRange,
    origin: int = 0,
    count: int | None = None,
) -> bytes:
    """``BODY[section]<origin.count>`` as IMAP sends it (CRLF line ends, no NULs).

    *origin* and *count* count octets of the IMAP view, like the section's
    ``vsize``. Blobs wholly outside the requested window are not looked up.
    """
    _check_range(skeleton, section.start, section.end)
    stop = section.vsize if count is None else min(section.vsize, origin + count)
    if origin >= stop:
        return b""
    out: list[bytes] = []
    v = 0  # IMAP-view offset of the current piece within the section
    after_cr = False  # was the byte before the current piece a CR?
    for pos, seg in _overlapping(skeleton, section.start, section.end):
        lo = max(section.start - pos, 0)
        hi = min(section.end - pos, seg.length)
        first = pos <= section.start
        if (
            isinstance(seg, BlobSegment)
            and lo == 0
            and hi == seg.length
            and (v + seg.vlength + (1 if first and seg.lf_after_cr else 0) <= origin or v >= stop)
        ):
            # Whole blob outside the window: count it without fetching it.
            v += seg.vlength + (1 if first and seg.lf_after_cr else 0)
            after_cr = seg.ends_cr
            continue
        if v >= stop:
            break
        if isinstance(seg, InlineSegment):
            data = seg.data[lo:hi]
        else:
            stored = blobs.get(seg.blob_id)
            if stored is None:
                raise SkeletonError(f"missing blob {seg.blob_id}")
            data = seg.expand(stored)[lo:hi]
        view = imap_view(data, after_cr=after_cr and not first)
        out.append(view[max(origin - v, 0) : stop - v])
        v += len(view)
        after_cr = data.endswith(b"\r")
    return b"".join(out)
