"""THREAD (RFC 5256): ORDEREDSUBJECT and REFERENCES over stored keys, in memory.

Both algorithms work on :class:`~metadata.records.ThreadEntry` rows (UID, sent-date rank,
base subject, Message-ID, parents' ids), which one query returns for the searched
entries; no message is read.  The result is a forest of :class:`Node` with entries at the
nodes (None for a dummy parent), which the session turns into ``* THREAD`` numbers.

Wherever RFC 5256 says "sorted by sent date", messages are compared by their ``rank``:
their position when the searched messages are ordered by sent date, then UID (sequence
number), which PostgreSQL computes with the rows; a dummy compares as its first child.
Every rank is distinct, so a sort never meets a tie and the order a level was built in
does not matter: the links are set as parent pointers only, in one pass over the
messages, and the children lists are built once afterwards (no list removal when a link
moves).  Cost: one dictionary lookup per Message-ID and reference, a walk up the parents
per link to a container something already hangs under (the loop check, RFC 5256 step 1B),
and one sort of integers per level.

Nothing recurses: anyone can mail a user a reply chain thousands of messages deep, so the
steps over the tree (pruning, sorting) walk it with an explicit list, as the renderer in
:mod:`imapd.response` does; a tree of any depth threads.

``tests/sort_reference.py`` holds the previous implementation (over full rows, dates as
floats); the tests check that both give the same threads.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from metadata.records import ThreadEntry

__all__ = ["Node", "inner_nodes", "ordered_subject", "references"]


class Node:
    """A thread member (``entry`` None for a dummy) and its children in order.

    :ivar rank: the entry's sent-date rank; for a dummy, its first child's once the
        level below is sorted.
    """

    # Slots: a 10,000-message THREAD makes 10,000+ of these.
    __slots__ = ("children", "entry", "group", "kids", "parent", "rank")

    def __init__(self, entry: ThreadEntry | None = None, rank: int = -1) -> None:
        self.entry = entry
        self.rank = rank
        self.children: list[Node] = []
        self.parent: Node | None = None
        #: While the links are made (step 1): how many nodes have this one as parent, and
        #: a union-find pointer towards a node of every tree this one was ever linked in.
        self.kids = 0
        self.group: Node = self


_RANK = attrgetter("rank")


def ordered_subject(entries: Sequence[ThreadEntry]) -> list[Node]:
    """ORDEREDSUBJECT (RFC 5256 3): messages grouped by base subject, each group sorted by
    sent date; the first is the parent of all the others; groups ordered by the sent date
    of their first message."""
    groups: dict[str, Node] = {}
    for entry in sorted(entries, key=_RANK):
        node = Node(entry, entry.rank)
        root = groups.get(entry.subject)
        if root is None:
            # Visited by sent date: the groups are made in the order of their first message.
            groups[entry.subject] = node
        else:
            root.children.append(node)
    return list(groups.values())


def _group(node: Node) -> Node:
    """The representative of every node ``node`` was ever linked with (union-find with
    path halving): two nodes in different groups are in different trees.  A link cut in
    step 1C does not split a group, so one group may hold several trees."""
    while node.group is not node:
        node.group = node = node.group.group
    return node


def _link(child: Node, parent: Node) -> None:
    """Hang ``child`` (without a parent) under ``parent``."""
    child.parent = parent
    parent.kids += 1
    top, other = _group(parent), _group(child)
    if top is not other:
        other.group = top


def _linked(ancestor: Node, node: Node) -> bool:
    """Whether ``ancestor`` is ``node`` or one of its ancestors (a link would loop)."""
    if ancestor is node:
        return True
    if not ancestor.kids or _group(ancestor) is not _group(node):
        # Nothing hangs under it, or they were never in one tree: no walk.  A long chain
        # links message after message into one tree; walking up it every time would be
        # quadratic in its depth.
        return False
    current: Node | None = node
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


def references(entries: Sequence[ThreadEntry]) -> list[Node]:
    """REFERENCES (RFC 5256 3): parent/child links from Message-ID and References, then
    subject grouping of the roots, children and roots sorted by sent date.

    :param entries: in UID order (which message keeps a repeated Message-ID, and which
        link comes first, depends on it).
    """
    table: dict[str, Node] = {}
    containers: list[Node] = []
    for entry in entries:
        # (1A) a message's own container; a missing or repeated Message-ID gets a unique one.
        own = entry.message_id
        node = table.get(own) if own else None
        if node is None or node.entry is not None:
            node = Node()
            containers.append(node)
            if own and own not in table:
                table[own] = node
        node.entry = entry
        node.rank = entry.rank
        # (1B) link the references in order, never creating a loop or overriding a link.
        previous: Node | None = None
        for ref in entry.references:
            container = table.get(ref)
            if container is None:
                container = table[ref] = Node()
                containers.append(container)
            if (previous is not None and container.parent is None
                    and not _linked(container, previous)):
                _link(container, previous)
            previous = container
        # (1C) the last reference is the message's parent (replacing an earlier guess).
        if previous is not None and node.parent is previous:
            # Already its parent (an earlier message's References said so): no loop
            # to look for, and in a long chain that walk would cost its depth.
            continue
        if node.parent is not None:
            node.parent.kids -= 1
        if previous is not None and not _linked(node, previous):
            _link(node, previous)
        else:
            node.parent = None
    # (2) the root set, and the children lists from the parent pointers.
    roots: list[Node] = []
    for node in containers:
        parent = node.parent
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
    # (3) prune dummies.  One walk serves steps 3 and 4: pruning only moves nodes up, so
    # in its reverse every node still comes after the nodes now under it.
    bottom_up = inner_nodes(roots)
    bottom_up.reverse()
    roots = _prune(roots, bottom_up)
    # (4) sort each level by the sent date of its (first) message.
    for node in bottom_up:
        if node.children:  # a pruned dummy may have lost them all
            _sort_level(node)
    _sort_roots(roots)
    # (5) group the roots by base subject.
    copies: list[Node] = []
    roots = _group_by_subject(roots, copies)
    # (6) sort once more, roots included.  Grouping changed the children of roots and of
    # the copies it made of them (5C iv), nothing below (a merged root keeps its sorted
    # tree under its new parent): only those levels.
    for node in (*copies, *roots):
        if node.children:
            _sort_level(node)
    _sort_roots(roots)
    return roots


def inner_nodes(level: list[Node]) -> list[Node]:
    """The nodes in and under ``level`` that have children, each before its descendants
    (reversed, each after them): a walk of the tree without recursion."""
    order: list[Node] = []
    stack = [node for node in level if node.children]
    while stack:
        node = stack.pop()
        order.append(node)
        for child in node.children:
            if child.children:  # most nodes are leaves: not listed
                stack.append(child)
    return order


def _prune(roots: list[Node], bottom_up: list[Node]) -> list[Node]:
    """RFC 5256 REFERENCES step 3: dummies without children go; a dummy's children take
    its place, except at the root when there are several of them.

    :param bottom_up: the nodes with children, each after the nodes under it."""
    for node in bottom_up:
        node.children = _pruned(node.children, at_root=False)
    return _pruned(roots, at_root=True)


def _pruned(children: list[Node], *, at_root: bool) -> list[Node]:
    """``children`` with their dummies replaced, theirs already pruned."""
    kept: list[Node] = []
    for node in children:
        if node.entry is not None:
            kept.append(node)
        elif not node.children:
            continue
        elif at_root and len(node.children) > 1:
            kept.append(node)
        else:
            kept.extend(node.children)
    return kept


def _sort_level(node: Node) -> None:
    """Sort ``node``'s children by rank (the levels below already sorted); a dummy then
    takes its first child's rank."""
    if len(node.children) > 1:
        node.children.sort(key=_RANK)
    if node.entry is None:
        node.rank = node.children[0].rank


def _sort_roots(roots: list[Node]) -> None:
    if len(roots) > 1:
        roots.sort(key=_RANK)


def _first(node: Node) -> ThreadEntry | None:
    """The entry of ``node``, or for a dummy of its first child with one (sorted)."""
    while node.entry is None and node.children:
        node = node.children[0]
    return node.entry


def _group_by_subject(roots: list[Node], copies: list[Node]) -> list[Node]:
    """RFC 5256 REFERENCES step 5: roots with the same base subject come together.

    :param copies: gets the nodes made for a holder's message (5C iv)."""
    subjects: dict[str, Node] = {}
    firsts: list[ThreadEntry | None] = []
    for root in roots:
        first = _first(root)
        firsts.append(first)
        if first is None or not first.subject:
            continue
        old = subjects.get(first.subject)
        if old is None:
            subjects[first.subject] = root
            continue
        # (5B) prefer a dummy, then a non-reply, as the group's holder.
        old_reply = old.entry is not None and old.entry.reply
        if (old.entry is not None and root.entry is None) or (old_reply and not first.reply):
            subjects[first.subject] = root
    result: list[Node] = []
    for root, first in zip(roots, firsts, strict=True):
        # A merge changes only the holder and the merged root, never a root still to come,
        # and a holder keeps its first entry: the subjects found above still hold.
        holder = subjects.get(first.subject) if first is not None and first.subject else None
        if holder is None or holder is root:
            result.append(root)
            continue
        _merge(holder, root, copies)
    return result


def _merge(holder: Node, root: Node, copies: list[Node]) -> None:
    """Put ``root`` into ``holder``'s thread (RFC 5256 5C)."""
    holder_reply = holder.entry is not None and holder.entry.reply
    root_reply = root.entry is not None and root.entry.reply
    if holder.entry is None and root.entry is None:
        # (i) both dummies: the root's children join the holder.
        holder.children.extend(root.children)
        root.children = []
        return
    if holder.entry is None or (root_reply and not holder_reply):
        # (ii) a dummy holder takes the message; (iii) a reply becomes a child.
        holder.children.append(root)
        return
    # (iv) otherwise both become children of a new dummy in the holder's place.
    copy = Node(holder.entry, holder.rank)
    copy.children = holder.children
    copies.append(copy)
    holder.entry = None
    holder.children = [copy, root]
