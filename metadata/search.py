"""SEARCH criteria the store understands, and their translation to one SQL ``WHERE``.

The criteria are a small neutral tree of frozen dataclasses; the IMAP layer maps its own
SEARCH AST (``imapd.searchkeys``) onto it after resolving what only the session knows:
sequence numbers and ``\\Recent`` become :class:`UidIn`, ``*`` is resolved.  Mapping:

=============================  ===============================================
IMAP key                        criterion
=============================  ===============================================
ALL                             :class:`Everything`
SEEN, FLAGGED, ... / UN...      :class:`HasFlag` (bit from :mod:`metadata.flags`) / :class:`Not`
KEYWORD k                       :class:`HasKeyword`
FROM/TO/CC/BCC/SUBJECT/HEADER   :class:`HeaderContains`
BODY / TEXT                     :class:`BodyContains` / :class:`TextContains`
BEFORE/ON/SINCE, SENT...        :class:`DateMatches`
LARGER / SMALLER                :class:`SizeMatches`
MODSEQ                          :class:`ModSeqAtLeast`
UID, sequence set, RECENT       :class:`UidIn`
NOT, OR, lists                  :class:`Not`, :class:`AnyOf`, :class:`AllOf`
=============================  ===============================================

:func:`compile_criteria` is pure: it returns SQL text over the aliases ``mm``
(``mailbox_messages``) and ``m`` (``messages``) and the parameter values, and says whether
the ``messages`` join is needed.  Header and address tests are case-insensitive substring
tests on casefolded text (exact RFC 3501 semantics), and so are BODY and TEXT, on the
casefolded body and header text that the ``pg_trgm`` GIN indexes serve (``ILIKE`` with the
string escaped: a pattern of three characters or more is looked up by its trigrams).  The
empty string matches everything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from metadata.flags import SYSTEM_FLAGS
from metadata.uidset import UidSet

__all__ = [
    "AllOf",
    "AnyOf",
    "BodyContains",
    "CompiledSearch",
    "Criterion",
    "DateMatches",
    "Everything",
    "HasFlag",
    "HasKeyword",
    "HeaderContains",
    "ModSeqAtLeast",
    "Not",
    "SizeMatches",
    "TextContains",
    "UidIn",
    "compile_criteria",
    "like_escape",
]

#: Headers with their own column (the rest are searched in ``header_fields``).
ADDRESS_COLUMNS = {
    "subject": "search_subject",
    "from": "search_from",
    "to": "search_to",
    "cc": "search_cc",
    "bcc": "search_bcc",
}


class Criterion:
    """Base of every search criterion."""

    __slots__ = ()


@dataclass(frozen=True)
class Everything(Criterion):
    """Every message (ALL)."""


@dataclass(frozen=True)
class UidIn(Criterion):
    """Messages whose UID is in ``uids`` (an empty set matches nothing)."""

    uids: UidSet


@dataclass(frozen=True)
class HasFlag(Criterion):
    """Messages with the system flag ``bit`` set (:data:`metadata.flags.SEEN`...)."""

    bit: int

    def __post_init__(self) -> None:
        if self.bit not in SYSTEM_FLAGS:
            raise ValueError(f"not a system flag bit: {self.bit}")


@dataclass(frozen=True)
class HasKeyword(Criterion):
    """Messages with keyword ``keyword`` (exact spelling)."""

    keyword: str


@dataclass(frozen=True)
class HeaderContains(Criterion):
    """Messages with a header field ``name`` (any case) whose decoded value contains
    ``value`` case-insensitively; an empty ``value`` asks only that the field exists."""

    name: str
    value: str


@dataclass(frozen=True)
class BodyContains(Criterion):
    """Messages whose body text contains ``value``, ignoring case (BODY)."""

    value: str


@dataclass(frozen=True)
class TextContains(Criterion):
    """Messages whose header or body text contains ``value``, ignoring case (TEXT)."""

    value: str


@dataclass(frozen=True)
class DateMatches(Criterion):
    """INTERNALDATE (``internal``) or Date: header (``sent``) compared as a calendar date in
    the message's own timezone, ignoring the time (RFC 3501).  ``since`` is on-or-after."""

    field: Literal["internal", "sent"]
    op: Literal["before", "on", "since"]
    day: dt.date

    def __post_init__(self) -> None:
        if self.field not in ("internal", "sent") or self.op not in ("before", "on", "since"):
            raise ValueError(f"bad date criterion {self.field} {self.op}")


@dataclass(frozen=True)
class SizeMatches(Criterion):
    """RFC822.SIZE strictly ``larger`` or ``smaller`` than ``octets``."""

    op: Literal["larger", "smaller"]
    octets: int

    def __post_init__(self) -> None:
        if self.op not in ("larger", "smaller"):
            raise ValueError(f"bad size criterion {self.op}")


@dataclass(frozen=True)
class ModSeqAtLeast(Criterion):
    """Messages whose mod-sequence is at least ``modseq`` (CONDSTORE MODSEQ)."""

    modseq: int


@dataclass(frozen=True)
class Not(Criterion):
    criterion: Criterion


@dataclass(frozen=True)
class AllOf(Criterion):
    """Messages matching every criterion (an empty tuple matches everything)."""

    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class AnyOf(Criterion):
    """Messages matching at least one criterion (an empty tuple matches nothing)."""

    criteria: tuple[Criterion, ...]


@dataclass(frozen=True)
class CompiledSearch:
    """A ``WHERE`` condition over ``mm``/``m`` using ``$first_param``.. placeholders."""

    sql: str
    params: tuple[Any, ...]
    needs_message: bool
    #: It holds a BODY/TEXT substring test: plan it for its parameters every time (see
    #: :meth:`metadata.messages.Messages.search`).
    substring: bool = False


@dataclass
class _Builder:
    first_param: int
    params: list[Any] = field(default_factory=list)
    needs_message: bool = False
    substring: bool = False

    def param(self, value: Any, cast: str = "") -> str:
        self.params.append(value)
        return f"${self.first_param + len(self.params) - 1}{cast}"

    def build(self, c: Criterion) -> str:
        match c:
            case Everything():
                return "TRUE"
            case UidIn(uids):
                if not uids:
                    return "FALSE"
                lows, highs = uids.arrays()
                return (f"EXISTS (SELECT 1 FROM unnest({self.param(lows, '::bigint[]')}, "
                        f"{self.param(highs, '::bigint[]')}) AS r(lo, hi) "
                        "WHERE mm.uid BETWEEN r.lo AND r.hi)")
            case HasFlag(bit):
                # Literal bits, so the planner can match the partial flag indexes.
                return f"(mm.flags & {int(bit)} <> 0)"
            case Not(HasFlag(bit)):
                return f"(mm.flags & {int(bit)} = 0)"
            case HasKeyword(keyword):
                return f"({self.param(keyword, '::text')} = ANY (mm.keywords))"
            case HeaderContains(name, value):
                return self.header(name, value)
            case BodyContains(value):
                return self.fulltext(value, ("m.search_body",))
            case TextContains(value):
                return self.fulltext(value, ("m.search_header", "m.search_body"))
            case DateMatches(which, op, day):
                if which == "internal":
                    column = ("((mm.internaldate AT TIME ZONE 'UTC')"
                              " + make_interval(mins => mm.internaldate_offset))::date")
                else:
                    self.needs_message = True
                    column = "m.sent_date"
                sign = {"before": "<", "on": "=", "since": ">="}[op]
                return f"COALESCE({column} {sign} {self.param(day, '::date')}, FALSE)"
            case SizeMatches(op, octets):
                sign = ">" if op == "larger" else "<"
                return f"(mm.size {sign} {self.param(octets, '::bigint')})"
            case ModSeqAtLeast(modseq):
                return f"(mm.modseq >= {self.param(modseq, '::bigint')})"
            case Not(inner):
                return f"(NOT {self.build(inner)})"
            case AllOf(criteria):
                if not criteria:
                    return "TRUE"
                return "(" + " AND ".join(self.build(x) for x in criteria) + ")"
            case AnyOf(criteria):
                if not criteria:
                    return "FALSE"
                return "(" + " OR ".join(self.build(x) for x in criteria) + ")"
        raise TypeError(f"not a search criterion: {c!r}")

    def header(self, name: str, value: str) -> str:
        self.needs_message = True
        lname = name.lower()
        folded = value.casefold()
        if folded and lname in ADDRESS_COLUMNS:
            return f"(strpos(m.{ADDRESS_COLUMNS[lname]}, {self.param(folded, '::text')}) > 0)"
        name_param = self.param(lname, '::text')
        test = f"h.f->>0 = {name_param}"
        # A stored name in the lines has no colon, so a name with one matches no line
        # (else "x: y" would find field x with a value starting "y: ").
        line_test = ("FALSE" if ":" in lname or not lname
                     else f"starts_with(l.line, {self.param(lname + ': ', '::text')})")
        if folded:
            value_param = self.param(folded, '::text')
            test += f" AND strpos(h.f->>1, {value_param}) > 0"
            if line_test != "FALSE":
                line_test += (f" AND strpos(substr(l.line, "
                              f"{self.param(len(lname) + 3, '::int')}), {value_param}) > 0")
        # Rows since schema 6 keep the fields only as the lines of search_header (their
        # header_fields is empty); older rows, and those whose lines would be ambiguous
        # (metadata.messages._lines_hold_fields), keep the jsonb list.
        return (f"(CASE WHEN m.header_fields = '[]'::jsonb THEN EXISTS (SELECT 1 FROM "
                f"regexp_split_to_table(m.search_header, E'\\n') AS l(line) WHERE {line_test}) "
                f"ELSE EXISTS (SELECT 1 FROM jsonb_array_elements(m.header_fields) AS h(f) "
                f"WHERE {test}) END)")

    def fulltext(self, value: str, columns: tuple[str, ...]) -> str:
        """A substring test on the casefolded body (and, for TEXT, header) text, which the
        trigram indexes serve."""
        folded = value.casefold()
        if not folded:
            return "TRUE"
        self.needs_message = self.substring = True
        pattern = self.param("%" + like_escape(folded) + "%", "::text")
        return "(" + " OR ".join(f"{column} ILIKE {pattern}" for column in columns) + ")"


def like_escape(text: str) -> str:
    """``text`` as a LIKE pattern matching itself (backslash is LIKE's escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def compile_criteria(criterion: Criterion, first_param: int = 1) -> CompiledSearch:
    """Translate ``criterion`` into SQL; placeholders are numbered from ``first_param``.

    :raises TypeError: ``criterion`` holds something that is not a :class:`Criterion`.
    """
    builder = _Builder(first_param)
    sql = builder.build(criterion)
    return CompiledSearch(sql, tuple(builder.params), builder.needs_message, builder.substring)
