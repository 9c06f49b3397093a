"""The SORT and THREAD of main before issue 13, kept verbatim as the oracle.

The session now orders in PostgreSQL (:meth:`metadata.messages.Messages.sort_order`) and
threads narrowed rows with :mod:`imapd.threads`; these in-memory versions over the full
rows (:meth:`metadata.messages.Messages.sort_entries`, every key) define the semantics
the fast path must keep, and the tests compare the two on real messages.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from imapd.commands import SortKey
from imapd.response import ThreadNode
from imapd.threads import Node as NewNode
from metadata.records import SortEntry

__all__ = ["Node", "Shape", "ordered_subject", "references", "shape", "sort_entries",
           "thread_line"]

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


@dataclass(eq=False)
class Node:
    """A thread member (``entry`` None for a dummy) and its children in order."""

    entry: SortEntry | None = None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None
    #: Position in the searched entries, the tie-break after the sent date.
    index: int = -1
    #: The entry's sent date as a number, computed once (sorting compares it often).
    stamp: float = 0.0

    def first_entry(self) -> Node:
        """This node, or for a dummy its first child with a message (RFC 5256: a dummy
        sorts by its first child)."""
        node = self
        while node.entry is None and node.children:
            node = node.children[0]
        return node


def _date_key(node: Node) -> tuple[float, int]:
    first = node.first_entry()
    if first.entry is None:
        return (0.0, -1)
    return (first.stamp, first.index)


def _stamped(node: Node, entry: SortEntry, index: int) -> Node:
    node.entry = entry
    node.index = index
    node.stamp = entry.sent_at.timestamp()
    return node


def ordered_subject(entries: Sequence[SortEntry]) -> list[Node]:
    """ORDEREDSUBJECT (RFC 5256 3): messages grouped by base subject, each group sorted by
    sent date; the first is the parent of all the others; groups ordered by the sent date
    of their first message."""
    nodes = [_stamped(Node(), entry, i) for i, entry in enumerate(entries)]
    groups: dict[str, list[Node]] = {}
    for node in sorted(nodes, key=_date_key):
        assert node.entry is not None
        groups.setdefault(node.entry.keys.subject, []).append(node)
    roots: list[Node] = []
    for members in groups.values():
        root = members[0]
        root.children = members[1:]
        roots.append(root)
    roots.sort(key=_date_key)
    return roots


def _linked(ancestor: Node, node: Node) -> bool:
    """Whether ``ancestor`` is ``node`` or one of its ancestors (a link would loop)."""
    current: Node | None = node
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


def _set_parent(child: Node, parent: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _prune(children: Iterable[Node], *, at_root: bool) -> list[Node]:
    """RFC 5256 REFERENCES step 3: dummies without children go; a dummy's children take
    its place, except at the root when there are several of them."""
    kept: list[Node] = []
    for node in children:
        node.children = _prune(node.children, at_root=False)
        for child in node.children:
            child.parent = node
        if node.entry is not None:
            kept.append(node)
        elif not node.children:
            continue
        elif at_root and len(node.children) > 1:
            kept.append(node)
        else:
            kept.extend(node.children)
    return kept


def references(entries: Sequence[SortEntry]) -> list[Node]:
    """REFERENCES (RFC 5256 3): parent/child links from Message-ID and References, then
    subject grouping of the roots, children and roots sorted by sent date."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    for index, entry in enumerate(entries):
        # (1A) a message's own container; a missing or repeated Message-ID gets a unique one.
        own = entry.keys.message_id
        node = table.get(own) if own else None
        if node is None or node.entry is not None:
            node = Node()
            if own and own not in table:
                table[own] = node
        nodes.append(_stamped(node, entry, index))
        # (1B) link the references in order, never creating a loop or overriding a link.
        previous: Node | None = None
        for ref in entry.keys.references:
            container = table.get(ref)
            if container is None:
                container = table[ref] = Node()
            if (previous is not None and container.parent is None
                    and not _linked(container, previous)):
                _set_parent(container, previous)
            previous = container
        # (1C) the last reference is the message's parent (replacing an earlier guess).
        if previous is not None and not _linked(node, previous):
            if node.parent is not previous:
                _set_parent(node, previous)
        elif node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    # (2) the root set: containers without a parent.
    seen: set[int] = set()
    roots: list[Node] = []
    for node in [*table.values(), *nodes]:
        if node.parent is None and id(node) not in seen:
            seen.add(id(node))
            roots.append(node)
    # (3) prune dummies.
    roots = _prune(roots, at_root=True)
    # (4) sort each level by the sent date of its (first) message.
    _sort_tree(roots)
    # (5) group the roots by base subject.
    roots = _group_by_subject(roots)
    # (6) sort once more (grouping added children), roots included.
    _sort_tree(roots)
    return roots


def _sort_tree(level: list[Node]) -> None:
    for node in level:
        if node.children:  # most nodes are leaves: no call for them
            _sort_tree(node.children)
    if len(level) > 1:
        level.sort(key=_date_key)


def _subject(node: Node) -> tuple[str, bool] | None:
    first = node.first_entry()
    if first.entry is None:
        return None
    return first.entry.keys.subject, first.entry.keys.reply


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """RFC 5256 REFERENCES step 5: roots with the same base subject come together."""
    subjects: dict[str, Node] = {}
    for root in roots:
        found = _subject(root)
        if found is None or not found[0]:
            continue
        subject, reply = found
        old = subjects.get(subject)
        if old is None:
            subjects[subject] = root
            continue
        # (5B) prefer a dummy, then a non-reply, as the group's holder.
        old_reply = old.entry is not None and old.entry.keys.reply
        if (old.entry is not None and root.entry is None) or (old_reply and not reply):
            subjects[subject] = root
    result: list[Node] = []
    for root in roots:
        found = _subject(root)
        holder = subjects.get(found[0]) if found is not None and found[0] else None
        if holder is None or holder is root:
            result.append(root)
            continue
        _merge(holder, root)
    return result


def _merge(holder: Node, root: Node) -> None:
    """Put ``root`` into ``holder``'s thread (RFC 5256 5C)."""
    holder_reply = holder.entry is not None and holder.entry.keys.reply
    root_reply = root.entry is not None and root.entry.keys.reply
    if holder.entry is None and root.entry is None:
        # (i) both dummies: the root's children join the holder.
        for child in root.children:
            child.parent = holder
            holder.children.append(child)
        root.children = []
        return
    if holder.entry is None or (root_reply and not holder_reply):
        # (ii) a dummy holder takes the message; (iii) a reply becomes a child.
        root.parent = holder
        holder.children.append(root)
        return
    # (iv) otherwise both become children of a new dummy in the holder's place.
    copy = Node(holder.entry, holder.children, index=holder.index, stamp=holder.stamp)
    for child in copy.children:
        child.parent = copy
    holder.entry = None
    holder.index = -1
    holder.children = [copy, root]
    copy.parent = holder
    root.parent = holder


Shape = tuple[int | None, tuple["Shape", ...]]


def shape(node: Node | NewNode) -> Shape:
    """A thread of either implementation as nested ``(uid or None, children)``."""
    return (None if node.entry is None else node.entry.uid,
            tuple(shape(child) for child in node.children))


def _thread_members(node: ThreadNode) -> bytes:
    """The renderer of main before the stack-based one (recursive per branch), kept as
    the oracle of its bytes."""
    parts: list[bytes] = []
    while True:
        if node.number is not None:
            parts.append(b"%d" % node.number)
            if len(node.children) == 1:
                node = node.children[0]
                continue
        if node.children:
            parts.append(b"".join(b"(" + _thread_members(child) + b")"
                                  for child in node.children))
        return b" ".join(parts)


def thread_line(threads: Sequence[ThreadNode]) -> bytes:
    """``* THREAD ...`` for ``threads`` as the recursive renderer wrote it."""
    return b"* THREAD " + b"".join(b"(" + _thread_members(t) + b")" for t in threads) \
        if threads else b"* THREAD"
