"""Tests for imapd.listing: LIST-EXTENDED (RFC 5258) selection, CHILDINFO and attributes,
on the mailboxes of RFC 5258's examples (section 5), parsed from the RFC's command lines.

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


#: RFC 5258 section 5, examples 1 to 5: Fruit/Peach is subscribed but does not exist.
FRUIT = tree(
    {"INBOX": None, "Fruit": None, "Fruit/Apple": None, "Fruit/Banana": None, "Tofu": None,
     "Vegetable": None, "Vegetable/Broccoli": None, "Vegetable/Corn": None},
    {"INBOX", "Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"})

NO, HAS = "\\HasNoChildren", "\\HasChildren"
SUB, GONE = "\\Subscribed", "\\NonExistent"


def test_rfc5258_example_1_plain_list_lists_existing_mailboxes_only() -> None:
    """LIST "" % and LIST "" * return existing names, never a subscription of nothing."""
    assert listing(b'A01 LIST "" %', FRUIT) == [
        ("INBOX", (NO,), ()), ("Fruit", (HAS,), ()), ("Tofu", (NO,), ()),
        ("Vegetable", (HAS,), ())]
    assert [n for n, _, _ in listing(b'A02 LIST "" *', FRUIT)] == [
        "INBOX", "Fruit", "Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable",
        "Vegetable/Broccoli", "Vegetable/Corn"]


def test_rfc5258_example_2_subscribed_lists_subscriptions_with_nonexistent() -> None:
    """LIST (SUBSCRIBED) lists subscribed names, those that are not mailboxes as
    \\NonExistent, all with \\Subscribed."""
    assert listing(b'A02 LIST (SUBSCRIBED) "" "*"', FRUIT) == [
        ("INBOX", (NO, SUB), ()),
        ("Fruit/Banana", (NO, SUB), ()),
        ("Fruit/Peach", (NO, GONE, SUB), ()),
        ("Vegetable", (HAS, SUB), ()),
        ("Vegetable/Broccoli", (NO, SUB), ())]


def test_rfc5258_example_3_return_children_and_subscribed() -> None:
    """RETURN (CHILDREN) gives the children attributes; RETURN (SUBSCRIBED) marks the
    subscribed mailboxes of a plain listing without listing \\NonExistent ones."""
    assert listing(b'A03 LIST () "" "%" RETURN (CHILDREN)', FRUIT) == [
        ("INBOX", (NO,), ()), ("Fruit", (HAS,), ()), ("Tofu", (NO,), ()),
        ("Vegetable", (HAS,), ())]
    assert listing(b'A04 LIST "" "*" RETURN (SUBSCRIBED)', FRUIT) == [
        ("INBOX", (NO, SUB), ()), ("Fruit", (HAS,), ()), ("Fruit/Apple", (NO,), ()),
        ("Fruit/Banana", (NO, SUB), ()), ("Tofu", (NO,), ()), ("Vegetable", (HAS, SUB), ()),
        ("Vegetable/Broccoli", (NO, SUB), ()), ("Vegetable/Corn", (NO,), ())]


def test_rfc5258_example_4_remote_changes_nothing_here() -> None:
    """REMOTE is accepted; with no remote mailboxes the answer is the plain one."""
    assert listing(b'A05 LIST (REMOTE) "" "%" RETURN (CHILDREN)', FRUIT) == \
        listing(b'A03 LIST () "" "%" RETURN (CHILDREN)', FRUIT)


def test_rfc5258_example_5_recursivematch_reports_subscribed_children() -> None:
    """LIST (SUBSCRIBED RECURSIVEMATCH) "" % returns Fruit, not subscribed, because of its
    subscribed children, and Vegetable, subscribed, with CHILDINFO too; Tofu not at all."""
    assert listing(b'A04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)',
                   FRUIT) == [
        ("INBOX", (NO, SUB), ()),
        ("Fruit", (HAS,), ("SUBSCRIBED",)),
        ("Vegetable", (HAS, SUB), ("SUBSCRIBED",))]


#: RFC 5258 section 5, example 8: subscriptions at several depths, and a subscribed name
#: (Foo/Bar, once a mailbox) whose parent Foo does not exist either.
DEEP = tree(
    {"INBOX": None, "Moo": None, "Moo/Bar": None, "Moo/Bar/Baz": None, "Zoo": None,
     "Zoo/Bar": None},
    {"Foo/Bar", "Moo/Bar/Baz", "Zoo"})


def test_rfc5258_example_8_childinfo_for_each_level() -> None:
    """With %, every top-level name above a subscription the pattern misses is listed with
    CHILDINFO, a name that is not a mailbox as \\NonExistent."""
    assert listing(b'C01 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"', DEEP) == [
        ("Foo", (NO, GONE), ("SUBSCRIBED",)),
        ("Moo", (HAS,), ("SUBSCRIBED",)),
        ("Zoo", (HAS, SUB), ())]
    assert listing(b'C02 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%/%"', DEEP) == [
        ("Foo/Bar", (NO, GONE, SUB), ()),
        ("Moo/Bar", (HAS,), ("SUBSCRIBED",))]


def test_rfc5258_childinfo_is_suppressed_when_the_child_is_listed_anyway() -> None:
    """With *, every subscribed descendant is returned itself, so no CHILDINFO (section
    3.5: servers SHOULD suppress redundant CHILDINFO), and unsubscribed parents are not
    listed."""
    assert listing(b'C03 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"', DEEP) == [
        ("Foo/Bar", (NO, GONE, SUB), ()),
        ("Moo/Bar/Baz", (NO, SUB), ()),
        ("Zoo", (HAS, SUB), ())]


def test_rfc5258_example_9_several_patterns_in_one_command() -> None:
    """LIST "" ("INBOX" "Drafts" "Sent/%") lists what any pattern matches, each name once."""
    where = tree({"INBOX": None, "Drafts": "\\Drafts", "Sent": "\\Sent",
                  "Sent/March2004": None, "Sent/December2003": None, "Sent/August2004": None,
                  "Trash": "\\Trash"}, set())
    assert [n for n, _, _ in listing(b'A01 LIST "" ("INBOX" "Drafts" "Sent/%" "INBOX")',
                                     where)] == [
        "INBOX", "Drafts", "Sent/August2004", "Sent/December2003", "Sent/March2004"]


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
