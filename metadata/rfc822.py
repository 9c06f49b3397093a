"""Lenient RFC 822 / RFC 2045 tokenizing of header values.

Theory of operation: :class:`Tokenizer` walks one header value (bytes) with a cursor.
Each ``parse_*`` method consumes one syntactic item, appends what it found to a
``bytearray`` and reports, like the classic C parsers it mirrors, ``1`` when more input
follows, ``0`` at the end of the input and ``-1`` on invalid input. Whitespace and
comments after an item are skipped automatically, never before it.

The behaviour on broken input deliberately matches Dovecot's ``rfc822-parser.c`` and
``rfc2231-parser.c`` (Dovecot 2.3), because ENVELOPE and BODYSTRUCTURE must render
exactly as a reference IMAP server renders them, and real mail is full of broken
Content-Type headers. The code here is our own; only the observable behaviour is
shared.

Nothing here raises on junk: every byte sequence tokenizes to *something*.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "NUL_REPLACEMENT",
    "ContentType",
    "Tokenizer",
    "cstring",
    "is_atext",
    "parse_content_type",
    "parse_parameters",
]

#: What a NUL byte inside an address becomes (U+FFFD in UTF-8), as Dovecot does.
NUL_REPLACEMENT = b"\xef\xbf\xbd"

# atext bytes are 1, letters/digits/8-bit 2, atext that is a MIME tspecial ("/", "=",
# "?") 4. A MIME token is atext & 3, plus ".".
_ATEXT = bytearray(256)
for _c in b"!#$%&'*+-^_`{|}~":
    _ATEXT[_c] = 1
for _c in b"/=?":
    _ATEXT[_c] = 4
for _c in range(256):
    if (
        ord("0") <= _c <= ord("9")
        or ord("A") <= _c <= ord("Z")
        or ord("a") <= _c <= ord("z")
        or _c >= 0x80
    ):
        _ATEXT[_c] = 2
_ATEXT_TABLE = bytes(_ATEXT)
_TOKEN_TABLE = bytes(1 if (v & 3) or i == ord(".") else 0 for i, v in enumerate(_ATEXT_TABLE))
_ATEXT_OR_DOT_TABLE = bytes(1 if v or i == ord(".") else 0 for i, v in enumerate(_ATEXT_TABLE))
_LWSP = frozenset(b" \t\r\n")

_SPACE, _TAB, _CR, _LF = 0x20, 0x09, 0x0D, 0x0A
_LPAREN, _RPAREN, _BSLASH, _DQUOTE = 0x28, 0x29, 0x5C, 0x22
_DOT, _SLASH, _SEMI, _EQ, _AT = 0x2E, 0x2F, 0x3B, 0x3D, 0x40
_LBRACKET, _RBRACKET = 0x5B, 0x5D


def is_atext(c: int) -> bool:
    """Whether byte *c* is RFC 5322 atext (8-bit bytes count as atext, like Dovecot)."""
    return _ATEXT_TABLE[c] != 0


def cstring(value: bytes) -> bytes:
    """Cut *value* at its first NUL, as a C string would be."""
    nul = value.find(b"\0")
    return value if nul < 0 else value[:nul]


class Tokenizer:
    """A cursor over one header value; see the module docstring for return codes."""

    __slots__ = ("data", "end", "last_comment", "nul_replacement", "pos")

    def __init__(
        self,
        data: bytes,
        *,
        keep_comments: bool = False,
        nul_replacement: bytes | None = None,
    ) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        #: Text of the last comment skipped, when asked to keep it (address display names).
        self.last_comment: bytearray | None = bytearray() if keep_comments else None
        self.nul_replacement = nul_replacement

    def at(self, c: int) -> bool:
        """Whether the cursor is on byte *c* (False at the end)."""
        return self.pos < self.end and self.data[self.pos] == c

    def skip_comment(self) -> int:
        """Skip a (possibly nested) comment; the cursor is on "("."""
        data, lc = self.data, self.last_comment
        if lc is not None:
            lc.clear()
        self.pos += 1
        start = self.pos
        level = 1
        while self.pos < self.end:
            c = data[self.pos]
            if c == 0:
                if lc is not None:
                    start = self._replace_nul(lc, start)
            elif c == _LPAREN:
                level += 1
            elif c == _RPAREN:
                level -= 1
                if level == 0:
                    if lc is not None:
                        lc += data[start : self.pos]
                    self.pos += 1
                    return 1 if self.pos < self.end else 0
            elif c == _LF:
                if lc is not None:
                    start = self._unfold(lc, start)
            elif c == _BSLASH:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (_CR, _LF, 0):
                    self.pos -= 1
                else:
                    if lc is not None:
                        lc += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def _replace_nul(self, out: bytearray, start: int) -> int:
        """At a NUL inside a quoted item: flush the text since ``start`` and the
        replacement when one is set (else the NUL stays in the text); where text resumes."""
        if self.nul_replacement is None:
            return start
        out += self.data[start : self.pos]
        out += self.nul_replacement
        return self.pos + 1

    def _unfold(self, out: bytearray, start: int) -> int:
        """At an LF inside a quoted item: flush the text since ``start`` without the line
        break (CRLF or bare LF), which unfolds it; where text resumes."""
        stop = self.pos
        if stop > start and self.data[stop - 1] == _CR:
            stop -= 1
        out += self.data[start:stop]
        return self.pos + 1

    def _take_run(self, out: bytearray, table: bytes) -> int:
        """Append the bytes from the cursor that ``table`` marks, then skip whitespace."""
        data, end = self.data, self.end
        start = self.pos
        while self.pos < end and table[data[self.pos]]:
            self.pos += 1
        out += data[start : self.pos]
        if self.pos < end:
            return self.skip_lwsp()
        return 0

    def skip_lwsp(self) -> int:
        """Skip whitespace and comments."""
        data, end = self.data, self.end
        while self.pos < end:
            c = data[self.pos]
            if c in _LWSP:
                self.pos += 1
                continue
            if c != _LPAREN:
                break
            if self.skip_comment() < 0:
                return -1
        return 1 if self.pos < end else 0

    def parse_atom(self, out: bytearray) -> int:
        """One atom."""
        if self.pos >= self.end or not _ATEXT_TABLE[self.data[self.pos]]:
            return -1
        return self._take_run(out, _ATEXT_TABLE)

    def parse_dot_atom(self, out: bytearray) -> int:
        """A strict dot-atom (domains); whitespace around dots is tolerated."""
        data, end = self.data, self.end
        if self.pos >= end or not _ATEXT_TABLE[data[self.pos]]:
            return -1
        start = self.pos
        self.pos += 1
        while self.pos < end:
            if _ATEXT_TABLE[data[self.pos]]:
                self.pos += 1
                continue
            if start == self.pos:
                return -1
            out += data[start : self.pos]
            ret = self.skip_lwsp()
            if ret <= 0:
                return ret
            if data[self.pos] != _DOT:
                return 1
            self.pos += 1
            out.append(_DOT)
            if self.skip_lwsp() <= 0:
                return -1
            start = self.pos
        out += data[start : self.pos]
        return 0

    def parse_mime_token(self, out: bytearray) -> int:
        """A MIME token (may be empty: callers check)."""
        return self._take_run(out, _TOKEN_TABLE)

    def parse_quoted_string(self, out: bytearray) -> int:
        """A quoted string; the cursor is on the opening quote. Folding CRLFs are removed."""
        data, end = self.data, self.end
        self.pos += 1
        start = self.pos
        while self.pos < end:
            c = data[self.pos]
            if c == 0:
                start = self._replace_nul(out, start)
            elif c == _DQUOTE:
                out += data[start : self.pos]
                self.pos += 1
                return self.skip_lwsp()
            elif c == _LF:
                start = self._unfold(out, start)
            elif c == _BSLASH:
                self.pos += 1
                if self.pos >= end:
                    return -1
                if data[self.pos] in (_CR, _LF, 0):
                    self.pos -= 1
                else:
                    out += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def parse_phrase(self, out: bytearray) -> int:
        """A phrase (display name): words joined by one space, obsolete dots allowed."""
        data = self.data
        if self.pos >= self.end:
            return 0
        if data[self.pos] == _DOT:
            return -1
        while True:
            if data[self.pos] == _DQUOTE:
                ret = self.parse_quoted_string(out)
            else:
                ret = self._take_run(out, _ATEXT_OR_DOT_TABLE)
            if ret <= 0:
                return ret
            c = data[self.pos]
            if not _ATEXT_TABLE[c] and c != _DQUOTE and c != _DOT:
                break
            out.append(_SPACE)
        return self.skip_lwsp()

    def _parse_domain_literal(self, out: bytearray) -> int:
        data, end = self.data, self.end
        start = self.pos
        self.pos += 1
        while self.pos < end:
            c = data[self.pos]
            if c == 0:
                start = self._replace_nul(out, start)
            elif c == _LBRACKET:
                return -1
            elif c == _RBRACKET:
                out += data[start : self.pos + 1]
                self.pos += 1
                return self.skip_lwsp()
            elif c == _LF:
                start = self._unfold(out, start)
            elif c == _BSLASH:
                self.pos += 1
                if self.pos >= end:
                    return -1
                if data[self.pos] in (_CR, _LF, 0):
                    out += data[start : self.pos]
                    start = self.pos
                    self.pos -= 1
            self.pos += 1
        return -1

    def parse_domain(self, out: bytearray) -> int:
        """A domain after "@" (the cursor is on the "@")."""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1
        if self.data[self.pos] == _LBRACKET:
            return self._parse_domain_literal(out)
        return self.parse_dot_atom(out)

    def parse_content_param(self) -> tuple[int, bytes, bytes]:
        """One ``; name=value`` parameter: ``(ret, name, value)``."""
        if self.pos >= self.end:
            return 0, b"", b""
        data = self.data
        if data[self.pos] != _SEMI:
            return -1, b"", b""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1, b"", b""
        key = bytearray()
        if self.parse_mime_token(key) <= 0:
            return -1, b"", b""
        if data[self.pos] != _EQ:
            return -1, b"", b""
        self.pos += 1
        value = bytearray()
        ret = self.skip_lwsp()
        if ret <= 0:
            pass  # no value at all: an empty one
        elif data[self.pos] == _DQUOTE:
            ret = self.parse_quoted_string(value)
        elif data[self.pos] == _EQ:
            # Broken senders write name==?utf-8?b?...?= unquoted: take it up to a separator.
            start = self.pos
            while self.pos < self.end and data[self.pos] not in b"; \t\r\n":
                self.pos += 1
            value += data[start : self.pos]
        else:
            ret = self.parse_mime_token(value)
        return (-1 if ret < 0 else 1), bytes(key), bytes(value)


@dataclass(frozen=True, slots=True)
class ContentType:
    """A parsed ``type/subtype`` as the tokenizer saw it.

    ``value`` is ``b"type/subtype"``, ``b"type"`` (no slash) or ``b""`` when the header
    was too broken; ``ok`` is False when parameters must not be read.
    """

    value: bytes
    ok: bool

    @property
    def type(self) -> bytes:
        """The part before "/"."""
        return self.value.partition(b"/")[0]

    @property
    def subtype(self) -> bytes:
        """The part after "/" (empty if none)."""
        return self.value.partition(b"/")[2]


def parse_content_type(tok: Tokenizer) -> ContentType:
    """Read ``type/subtype`` from *tok* (at the start of a Content-Type value)."""
    out = bytearray()
    if tok.skip_lwsp() <= 0:
        return ContentType(b"", False)
    if tok.parse_mime_token(out) <= 0 or not out:
        # The main type survives when it is all there is ("Content-Type: text").
        return ContentType(bytes(out), False)
    if not tok.at(_SLASH):
        return ContentType(b"", False)
    tok.pos += 1
    if tok.skip_lwsp() <= 0:
        return ContentType(b"", False)
    out.append(_SLASH)
    mark = len(out)
    ret = tok.parse_mime_token(out)
    if ret < 0 or len(out) == mark or (tok.pos != tok.end and not tok.at(_SEMI)):
        return ContentType(b"", False)
    return ContentType(bytes(out), True)


def _rfc2231_escape(value: bytes) -> bytes:
    return value.replace(b"%", b"%25")


def parse_parameters(tok: Tokenizer) -> list[tuple[bytes, bytes]]:
    """Read all ``; name=value`` parameters, merging RFC 2231 continuations.

    Names and values come back as C strings (cut at NUL). ``name*`` extended values
    are kept undecoded under the starred name, as IMAP servers report them.
    """
    plain: list[tuple[bytes, bytes]] = []
    continued: list[tuple[bytes, int, bool, bytes]] = []
    # Dovecot's parser keeps the section index of the previous "name*" parameter when
    # a new one has none; reproducing that keeps odd messages byte-identical.
    idx = 0
    while True:
        ret, key, value = tok.parse_content_param()
        if ret == 0:
            break
        if ret < 0:
            if tok.pos >= tok.end:
                break
            tok.pos += 1
            continue
        key, value = cstring(key), cstring(value)
        star = key.find(b"*")
        if star < 0:
            plain.append((key, value))
            continue
        q = star
        if star + 1 < len(key):
            q = star + 1
            idx = 0
            while q < len(key) and 0x30 <= key[q] <= 0x39:
                idx = idx * 10 + key[q] - 0x30
                q += 1
        extended = q < len(key) and key[q] == 0x2A
        if extended:
            q += 1
        if q != len(key):
            plain.append((key, value))
        else:
            continued.append((key[:star], idx, extended, value))
    if not continued:
        return plain
    continued.sort(key=lambda p: (p[0], p[1]))
    i = 0
    while i < len(continued):
        name = continued[i][0]
        j = i
        ok = True
        have_extended = False
        next_idx = 0
        while j < len(continued) and continued[j][0].lower() == name.lower():
            if continued[j][1] != next_idx:
                ok = False
            have_extended = have_extended or continued[j][2]
            next_idx += 1
            j += 1
        group = continued[i:j]
        if not ok:
            for pname, pidx, pext, pvalue in group:
                suffix = b"*%d*" % pidx if pext else b"*%d" % pidx
                plain.append((pname + suffix, pvalue))
        else:
            merged = bytearray()
            if not group[0][2] and have_extended:
                merged += b"''"
            for _n, _i, pext, pvalue in group:
                merged += _rfc2231_escape(pvalue) if (not pext and have_extended) else pvalue
            plain.append((name + b"*" if have_extended else name, bytes(merged)))
        i = j
    return plain
