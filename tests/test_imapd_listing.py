"""Tests for imapd.listing: LIST-EXTENDED (RFC 5258) selection, CHILDINFO and attributes,
on the mailboxes of RFC 5258's examples (sections 5.1 to 5.10, checked against the RFC's
text), parsed from the RFC's command lines.

The RFC's example server also sends ``\\Marked`` and ``\\NoInferiors``, which objmail does
not track; objmail always sends ``\\HasChildren``/``\\HasNoChildren`` (it announces
CHILDREN).  The names, ``\\Subscribed``, ``\\NonExistent`` and CHILDINFO are the RFC's.
"""

from __future__ import annotations

import pytest

from imapd import commands as c
from imapd.grammar import CommandError, parse_command
from imapd.lexer import Frame
from imapd.listing import Listed, is_delimiter_request, join, select
from metadata.records import Mailbox, MailboxTree


def tree(existing: dict[str, str | None], subscribed: set[str],
         noselect: frozenset[str] = frozenset()) -> MailboxTree:
    """A snapshot with these mailboxes (name → special use) and subscriptions."""
    return MailboxTree(
        tuple(Mailbox(1, i, name, 1, 1, 1, use, name in noselect)
              for i, (name, use) in enumerate(existing.items(), 1)),
        frozenset(subscribed))


def listing(line: bytes, where: MailboxTree) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    cmd = parse_command(Frame((line,), ()))
    assert isinstance(cmd, c.List)
    return [(e.name, e.attributes, e.child_info) for e in select(cmd, where)]


#: RFC 5258 section 5.1's hierarchy (``C: A01 LIST "" "*"``) with section 5.2's subscriptions:
#: Fruit/Peach is subscribed but does not exist.
FRUIT = tree(
    {"INBOX": None, "Fruit": None, "Fruit/Apple": None, "Fruit/Banana": None, "Tofu": None,
     "Vegetable": None, "Vegetable/Broccoli": None, "Vegetable/Corn": None},
    {"INBOX", "Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"})

NO, HAS = "\\HasNoChildren", "\\HasChildren"
SUB, GONE = "\\Subscribed", "\\NonExistent"


def test_rfc5258_5_1_plain_list_lists_existing_mailboxes_only() -> None:
    """RFC 5258 5.1: ``A01 LIST "" "*"`` answers the eight mailboxes, never the subscription
    of nothing (Fruit/Peach); with % only the top level."""
    assert [n for n, _, _ in listing(b'A01 LIST "" "*"', FRUIT)] == [
        "INBOX", "Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable",
        "Vegetable/Broccoli", "Vegetable/Corn"]
    assert listing(b'A01 LIST "" %', FRUIT) == [
        ("INBOX", (NO,), ()), ("Fruit", (HAS,), ()), ("Tofu", (NO,), ()),
        ("Vegetable", (HAS,), ())]


def test_rfc5258_5_2_subscribed_lists_subscriptions_with_nonexistent() -> None:
    """RFC 5258 5.2, the RFC's exchange::

        C: A02 LIST (SUBSCRIBED) "" "*"
        S: * LIST (\\Marked \\NoInferiors \\Subscribed) "/" "inbox"
        S: * LIST (\\Subscribed) "/" "Fruit/Banana"
        S: * LIST (\\Subscribed \\NonExistent) "/" "Fruit/Peach"
        S: * LIST (\\Subscribed) "/" "Vegetable"
        S: * LIST (\\Subscribed) "/" "Vegetable/Broccoli"

    Fruit, not subscribed, is not listed although it has subscribed children."""
    assert listing(b'A02 LIST (SUBSCRIBED) "" "*"', FRUIT) == [
        ("INBOX", (NO, SUB), ()),
        ("Fruit/Banana", (NO, SUB), ()),
        ("Fruit/Peach", (NO, GONE, SUB), ()),
        ("Vegetable", (HAS, SUB), ()),
        ("Vegetable/Broccoli", (NO, SUB), ())]


def test_rfc5258_5_3_and_5_4_return_children() -> None:
    """RFC 5258 5.3 ``A03 LIST () "" "%" RETURN (CHILDREN)``: Fruit and Vegetable
    \\HasChildren, Tofu \\HasNoChildren.  5.4 adds REMOTE; with no remote mailboxes the
    answer is the same (no Bread, no Meat)."""
    assert listing(b'A03 LIST () "" "%" RETURN (CHILDREN)', FRUIT) == [
        ("INBOX", (NO,), ()), ("Fruit", (HAS,), ()), ("Tofu", (NO,), ()),
        ("Vegetable", (HAS,), ())]
    assert listing(b'A04 LIST (REMOTE) "" "%" RETURN (CHILDREN)', FRUIT) == \
        listing(b'A03 LIST () "" "%" RETURN (CHILDREN)', FRUIT)


def test_rfc5258_5_5_and_5_6_remote_subscribed_and_return_subscribed() -> None:
    """RFC 5258 5.5 ``A05 LIST (REMOTE SUBSCRIBED) "" "*"`` is 5.2's answer (plus remote
    Bread, which objmail has not); 5.6 ``A06 LIST (REMOTE) "" "*" RETURN (SUBSCRIBED)``
    marks the subscribed mailboxes of the plain listing, without Fruit/Peach."""
    assert listing(b'A05 LIST (REMOTE SUBSCRIBED) "" "*"', FRUIT) == \
        listing(b'A02 LIST (SUBSCRIBED) "" "*"', FRUIT)
    assert listing(b'A06 LIST (REMOTE) "" "*" RETURN (SUBSCRIBED)', FRUIT) == [
        ("INBOX", (NO, SUB), ()), ("Fruit", (HAS,), ()), ("Fruit/Apple", (NO,), ()),
        ("Fruit/Banana", (NO, SUB), ()), ("Tofu", (NO,), ()), ("Vegetable", (HAS, SUB), ()),
        ("Vegetable/Broccoli", (NO, SUB), ()), ("Vegetable/Corn", (NO,), ())]


def test_rfc5258_5_7_several_patterns_in_one_command() -> None:
    """RFC 5258 5.7 ``BBB LIST "" ("INBOX" "Drafts" "Sent/%")``: what any pattern matches,
    each name once (a repeated pattern adds nothing)."""
    where = tree({"INBOX": None, "Drafts": "\\Drafts", "Sent": "\\Sent",
                  "Sent/March2004": None, "Sent/December2003": None, "Sent/August2004": None,
                  "Trash": "\\Trash"}, set())
    assert [n for n, _, _ in listing(b'BBB LIST "" ("INBOX" "Drafts" "Sent/%" "INBOX")',
                                     where)] == [
        "INBOX", "Drafts", "Sent/August2004", "Sent/December2003", "Sent/March2004"]


def _foo(existing: tuple[str, ...], subscribed: set[str]) -> MailboxTree:
    return tree({"INBOX": None, **{n: None for n in existing}}, subscribed)


def test_rfc5258_5_8_childinfo_against_haschildren() -> None:
    """RFC 5258 5.8 on INBOX, Foo, Foo/Bar, Foo/Baz, Moo, each case as the RFC gives it:

    A) only Foo/Baz subscribed: ``C02 LIST (SUBSCRIBED) "" "*"`` gives Foo/Baz;
       ``LIST (SUBSCRIBED) "" "%"`` nothing; ``C04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"``
       gives ``* LIST () "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))``.
    A1) Foo subscribed too: ``* LIST (\\Subscribed) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))``.
    A2) no mailbox Foo: ``* LIST (\\NonExistent) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))``.
    B) nothing subscribed: no responses.
    C) Foo and Moo subscribed, ``RETURN (CHILDREN)``: ``(\\HasChildren \\Subscribed) "Foo"``
       and ``(\\HasNoChildren \\Subscribed) "Moo"``, no CHILDINFO."""
    every = ("Foo", "Foo/Bar", "Foo/Baz", "Moo")
    a = _foo(every, {"Foo/Baz"})
    assert listing(b'CA3 LIST "" "%" RETURN (CHILDREN)', a) == [
        ("INBOX", (NO,), ()), ("Foo", (HAS,), ()), ("Moo", (NO,), ())]
    assert listing(b'C02 LIST (SUBSCRIBED) "" "*"', a) == [("Foo/Baz", (NO, SUB), ())]
    assert listing(b'C03 LIST (SUBSCRIBED) "" "%"', a) == []
    recursive = b'C04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'
    assert listing(recursive, a) == [("Foo", (HAS,), ("SUBSCRIBED",))]
    assert listing(recursive, _foo(every, {"Foo", "Foo/Baz"})) == [
        ("Foo", (HAS, SUB), ("SUBSCRIBED",))]
    assert listing(recursive, _foo(("Foo/Bar", "Foo/Baz", "Moo"), {"Foo/Baz"})) == [
        ("Foo", (HAS, GONE), ("SUBSCRIBED",))]
    assert listing(recursive, _foo(every, set())) == []
    assert listing(recursive + b" RETURN (CHILDREN)", _foo(every, {"Foo", "Moo"})) == [
        ("Foo", (HAS, SUB), ()), ("Moo", (NO, SUB), ())]


def test_rfc5258_5_9_childinfo_whether_or_not_children_match() -> None:
    """RFC 5258 5.9, the RFC's exchange (objmail lists in name order and adds the
    children attributes; qux2/bar2 exists here with a parent qux2 the store creates)::

        C: D03 LIST (RECURSIVEMATCH SUBSCRIBED) "" "*2"
        S: * LIST () "/" "foo2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\Subscribed) "/" "foo2/bar2"
        S: * LIST (\\Subscribed) "/" "baz2/bar2"
        S: * LIST (\\Subscribed) "/" "baz2/bar22"
        S: * LIST (\\Subscribed) "/" "baz2/bar222"
        S: * LIST (\\Subscribed) "/" "eps2" ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\\Subscribed) "/" "qux2/bar2"

    foo2 carries CHILDINFO for foo2/bar1, which "*2" misses; baz2 is left out, every
    subscribed child of it being listed itself (3.5: redundant CHILDINFO SHOULD NOT be
    sent); eps2 carries it for eps2/mamba."""
    names = ("foo2", "foo2/bar1", "foo2/bar2", "baz2", "baz2/bar2", "baz2/bar22",
             "baz2/bar222", "eps2", "eps2/mamba", "qux2", "qux2/bar2")
    subscribed = {"foo2/bar1", "foo2/bar2", "baz2/bar2", "baz2/bar22", "baz2/bar222", "eps2",
                  "eps2/mamba", "qux2/bar2"}
    assert sorted(listing(b'D03 LIST (RECURSIVEMATCH SUBSCRIBED) "" "*2"',
                          _foo(names, subscribed))) == sorted([
        ("foo2", (HAS,), ("SUBSCRIBED",)),
        ("foo2/bar2", (NO, SUB), ()),
        ("baz2/bar2", (NO, SUB), ()),
        ("baz2/bar22", (NO, SUB), ()),
        ("baz2/bar222", (NO, SUB), ()),
        ("eps2", (HAS, SUB), ("SUBSCRIBED",)),
        ("qux2/bar2", (NO, SUB), ())])


def test_rfc5258_5_10_childinfo_for_a_nonexistent_subscribed_child() -> None:
    """RFC 5258 5.10::

        C: a1 LIST "" ("foo")
        S: * LIST () "/" foo
        C: a2 LIST (SUBSCRIBED) "" "foo/*"
        S: * LIST (\\Subscribed \\NonExistent) "/" foo/bar
        C: a3 LIST (SUBSCRIBED RECURSIVEMATCH) "" foo RETURN (CHILDREN)
        S: * LIST (\\HasNoChildren) "/" foo ("CHILDINFO" ("SUBSCRIBED"))

    CHILDINFO does not imply \\HasChildren: foo/bar is only a subscription."""
    where = _foo(("foo",), {"foo/bar"})
    assert listing(b'a1 LIST "" ("foo")', where) == [("foo", (NO,), ())]
    assert listing(b'a2 LIST (SUBSCRIBED) "" "foo/*"', where) == [
        ("foo/bar", (NO, GONE, SUB), ())]
    assert listing(b'a3 LIST (SUBSCRIBED RECURSIVEMATCH) "" foo RETURN (CHILDREN)',
                   where) == [("foo", (NO,), ("SUBSCRIBED",))]


def test_rfc6154_special_use_selection_and_recursivematch() -> None:
    """LIST (SPECIAL-USE) lists only special-use mailboxes (RFC 6154 example 2); with
    RECURSIVEMATCH a parent of one the pattern misses carries CHILDINFO ("SPECIAL-USE")."""
    where = tree({"INBOX": None, "Drafts": "\\Drafts", "Lists": None,
                  "Lists/Archive": "\\Archive", "Sent": "\\Sent"}, {"INBOX"})
    assert listing(b't1 LIST (SPECIAL-USE) "" "*"', where) == [
        ("Drafts", (NO, "\\Drafts"), ()), ("Lists/Archive", (NO, "\\Archive"), ()),
        ("Sent", (NO, "\\Sent"), ())]
    assert listing(b't2 LIST (SPECIAL-USE RECURSIVEMATCH) "" "%"', where) == [
        ("Drafts", (NO, "\\Drafts"), ()), ("Lists", (HAS,), ("SPECIAL-USE",)),
        ("Sent", (NO, "\\Sent"), ())]
    both = listing(b't3 LIST (SUBSCRIBED SPECIAL-USE) "" "*"', where)
    assert both == []  # every base option is a criterion: INBOX has no special use


def test_noselect_parents_and_the_reference() -> None:
    """A \\Noselect parent is listed for itself (no STATUS wanted); the reference is
    prefixed to every pattern."""
    where = tree({"Work": None, "Work/2024": None}, set(), noselect=frozenset({"Work"}))
    cmd = parse_command(Frame((b'a LIST (REMOTE) "Work" ("%" "2024")',), ()))
    assert isinstance(cmd, c.List)
    assert select(cmd, where) == [Listed("Work/2024", (NO,), (), where.mailboxes[1], True)]
    cmd = parse_command(Frame((b'a LIST "" "*" RETURN (STATUS (MESSAGES))',), ()))
    assert isinstance(cmd, c.List)
    assert [(e.name, e.attributes, e.wants_status) for e in select(cmd, where)] == [
        ("Work", (HAS, "\\Noselect"), False), ("Work/2024", (NO,), True)]


def test_status_is_only_wanted_for_names_listed_for_themselves() -> None:
    """RFC 5819 3: a mailbox returned only for CHILDINFO gets no STATUS."""
    cmd = parse_command(Frame(
        (b'A02 LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (STATUS (MESSAGES))',), ()))
    assert isinstance(cmd, c.List)
    assert [(e.name, e.wants_status) for e in select(cmd, FRUIT)] == [
        ("INBOX", True), ("Fruit", False), ("Vegetable", True)]


@pytest.mark.parametrize(("line", "delimiter"), [
    (b'a LIST "" ""', True),
    (b'a LIST () "" ""', True),
    (b'a LIST "" "" RETURN (CHILDREN)', True),
    (b'a LIST (SUBSCRIBED) "" ""', False),
    (b'a LIST "" ("" "%")', False),
])
def test_the_delimiter_request(line: bytes, delimiter: bool) -> None:
    """An empty pattern alone, without selection options, asks for the delimiter."""
    cmd = parse_command(Frame((line,), ()))
    assert isinstance(cmd, c.List)
    assert is_delimiter_request(cmd) is delimiter


@pytest.mark.parametrize(("reference", "pattern", "joined"), [
    ("", "%", "%"), ("Work", "%", "Work/%"), ("Work/", "%", "Work/%"), ("Work", "/x", "/x")])
def test_join(reference: str, pattern: str, joined: str) -> None:
    """The reference and the pattern join at one delimiter (RFC 3501 6.3.8)."""
    assert join(reference, pattern) == joined


@pytest.mark.parametrize(("line", "reason"), [
    (b'a LIST (RECURSIVEMATCH) "" "*"', "RECURSIVEMATCH"),
    (b'a LIST (REMOTE RECURSIVEMATCH) "" "*"', "RECURSIVEMATCH"),
    (b'a LIST (BOGUS) "" "*"', "selection option"),
    (b'a LIST "" "*" RETURN (BOGUS)', "return option"),
    (b'a LIST "" "*" RETURN (STATUS (BOGUS))', "STATUS item"),
    (b'a LIST (SUBSCRIBED) ("x") "*"', "LIST"),
])
def test_invalid_options_are_bad(line: bytes, reason: str) -> None:
    """Unknown options, and RECURSIVEMATCH with no base option, are BAD (RFC 5258 3)."""
    with pytest.raises(CommandError) as caught:
        parse_command(Frame((line,), ()))
    assert reason in caught.value.text
