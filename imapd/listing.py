"""Which names a LIST returns, and with what: RFC 3501 6.3.8, LIST-EXTENDED (RFC 5258),
the SPECIAL-USE selection option (RFC 6154) and which entries LIST-STATUS (RFC 5819)
reports on.

Theory of operation
-------------------
A LIST is a pure function of the user's mailbox names and subscriptions (one snapshot,
:class:`~metadata.records.MailboxTree`) and the command, so it is computed here without
I/O and tested on the RFCs' own examples.

*Selection criteria* decide which names are candidates: every existing name (plain LIST),
subscribed names (``SUBSCRIBED``, including names that are not mailboxes, which get
``\\NonExistent``), names with a special use (``SPECIAL-USE``); with several base options a
name must meet them all.  A candidate is listed when the pattern (any of them) matches it.

``RECURSIVEMATCH`` adds the names the pattern matches that have a *descendant* meeting the
criteria which the pattern does not match, so the client would not otherwise learn of it:
they carry ``CHILDINFO`` naming the criteria (RFC 5258 3.5; a descendant the pattern
already returns makes CHILDINFO redundant, which the RFC asks servers to suppress).  Such a
name is listed even if it meets the criteria itself, and STATUS is only reported for names
listed for themselves and selectable (RFC 5819 3).

``\\HasChildren``/``\\HasNoChildren`` (CHILDREN, RFC 3348) are always sent and look at
existing mailboxes only; special-use attributes are always sent; ``\\Subscribed`` only when
the client asked for subscriptions (selection or return option).  ``REMOTE`` changes
nothing: every mailbox here is local.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from imapd import commands as c
from metadata.mailboxnames import DELIMITER, INBOX, ancestors, compile_pattern
from metadata.records import Mailbox, MailboxTree

__all__ = ["Listed", "is_delimiter_request", "join", "select"]

#: Selection options that are criteria (RECURSIVEMATCH extends them to descendants).
_CRITERIA = ("SUBSCRIBED", "SPECIAL-USE")


@dataclass(frozen=True)
class Listed:
    """One ``* LIST`` line to send.

    :ivar mailbox: the mailbox row, None for a name that is not a mailbox.
    :ivar wants_status: LIST-STATUS reports on it (listed for itself and selectable).
    """

    name: str
    attributes: tuple[str, ...]
    child_info: tuple[str, ...] = ()
    mailbox: Mailbox | None = None
    wants_status: bool = False


def join(reference: str, pattern: str) -> str:
    """LIST's reference and pattern as one name pattern (RFC 3501 6.3.8)."""
    if not reference or pattern.startswith(DELIMITER):
        return pattern
    if reference.endswith(DELIMITER):
        return reference + pattern
    return reference + DELIMITER + pattern


def is_delimiter_request(cmd: c.List) -> bool:
    """``LIST "" ""`` (also in extended syntax without selection options): the answer is
    the hierarchy delimiter and root, not a mailbox (RFC 3501 6.3.8, RFC 5258 3)."""
    return cmd.patterns == ("",) and not cmd.select_options


def select(cmd: c.List, tree: MailboxTree) -> list[Listed]:
    """The LIST responses for ``cmd`` over ``tree``, INBOX first, then by name."""
    boxes = {box.name: box for box in tree.mailboxes}
    subscribed = tree.subscribed
    options = set(cmd.select_options)
    criteria = [o for o in _CRITERIA if o in options]
    meets = _criteria(criteria, boxes, subscribed)
    matchers = [compile_pattern(join(cmd.reference, p)) for p in cmd.patterns if p]

    def matches(name: str) -> bool:
        return any(m(name) for m in matchers)

    names = set(boxes) | subscribed
    for name in subscribed:
        names.update(ancestors(name))
    # Names meeting the criteria that no pattern reaches: the ones CHILDINFO tells about.
    hidden = sorted(n for n in names if meets(n) and not matches(n)) \
        if "RECURSIVEMATCH" in options else []
    with_children = sorted({a for n in boxes for a in ancestors(n)})
    show_subscribed = "SUBSCRIBED" in options or "SUBSCRIBED" in cmd.return_options

    result = []
    for name in sorted(names, key=_sort_key):
        if not matches(name):
            continue
        own = meets(name)
        child_info = tuple(criteria) if _has_below(hidden, name) else ()
        if not own and not child_info:
            continue
        box = boxes.get(name)
        attrs = ["\\HasChildren" if _has(with_children, name) else "\\HasNoChildren"]
        if box is None:
            attrs.append("\\NonExistent")  # implies \Noselect (RFC 5258 3.4)
        elif box.noselect:
            attrs.append("\\Noselect")
        if show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if box is not None and box.special_use:
            attrs.append(box.special_use)
        result.append(Listed(name, tuple(attrs), child_info, box,
                             wants_status=own and box is not None and not box.noselect))
    return result


def _criteria(criteria: list[str], boxes: dict[str, Mailbox],
              subscribed: frozenset[str]) -> Callable[[str], bool]:
    """Whether a name meets every selection criterion (existing, for a plain LIST)."""
    if not criteria:
        return boxes.__contains__
    sub = "SUBSCRIBED" in criteria
    special = "SPECIAL-USE" in criteria

    def meets(name: str) -> bool:
        if sub and name not in subscribed:
            return False
        if special:
            box = boxes.get(name)
            return box is not None and bool(box.special_use)
        return True

    return meets


def _has(ordered: list[str], name: str) -> bool:
    i = bisect.bisect_left(ordered, name)
    return i < len(ordered) and ordered[i] == name


def _has_below(ordered: list[str], name: str) -> bool:
    """Whether the sorted ``ordered`` holds a name below ``name`` in the hierarchy."""
    prefix = name + DELIMITER
    i = bisect.bisect_left(ordered, prefix)
    return i < len(ordered) and ordered[i].startswith(prefix)


def _sort_key(name: str) -> tuple[bool, str]:
    return (name != INBOX and not name.startswith(INBOX + DELIMITER), name)
