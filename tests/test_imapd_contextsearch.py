"""Kept results of updating searches (RFC 5267): ordered sets, the ADDTO/REMOVEFROM position
arithmetic (checked against the client's side, :func:`apply_update`, and the RFC's
examples), limits and what each context answers.  Pure: no I/O."""

from __future__ import annotations

import random

import pytest

from imapd.commands import SortKey
from imapd.contextsearch import Context, Contexts, apply_update, diff, ordered_set
from imapd.response import ESearchData, to_bytes
from imapd.searchkeys import All


def test_ordered_set_keeps_the_order_and_only_ascending_runs() -> None:
    """A sorted result keeps its order; only consecutive ascending numbers become a range
    (RFC 5267 3.2: ``23765,23764,23763`` is not written ``23765:23763``)."""
    assert str(ordered_set([23765, 23764, 23763, 23761])) == "23765,23764,23763,23761"
    assert str(ordered_set([4, 5, 6, 1, 2, 9])) == "4:6,1:2,9"
    assert str(ordered_set([7])) == "7"
    with pytest.raises(ValueError):
        ordered_set([])


def test_rfc_addto_forms_are_equivalent() -> None:
    """RFC 5267 4.3.3: from 2734:2735, ``ADDTO (1 2733) ADDTO (1 2731:2732)``, ``ADDTO (1
    2731:2733)`` and ``ADDTO (1 2733 1 2731:2732)`` all give 2731:2735; the server sends
    the last, preferred, form."""
    start = [2734, 2735]
    want = [2731, 2732, 2733, 2734, 2735]
    two = apply_update(apply_update(start, "ADDTO", [(1, [2733])]), "ADDTO",
                       [(1, [2731, 2732])])
    assert two == want
    assert apply_update(start, "ADDTO", [(1, [2733]), (1, [2731, 2732])]) == want
    assert apply_update(start, "ADDTO", [(1, [2731, 2732, 2733])]) == want
    assert diff(start, want, ordered=True) == ([], [(1, [2731, 2732, 2733])])


def test_removefrom_positions_count_after_earlier_removals() -> None:
    """REMOVEFROM pairs name where a run starts once the earlier pairs are applied, and
    ADDTO pairs each run's final position."""
    old = [10, 20, 30, 40, 50]
    new = [10, 30, 60, 50, 70]
    removals, additions = diff(old, new, ordered=True)
    assert removals == [(2, [20]), (3, [40])]
    assert additions == [(3, [60]), (5, [70])]
    assert apply_update(apply_update(old, "REMOVEFROM", removals), "ADDTO", additions) == new


def test_search_results_use_position_zero_in_mailbox_order() -> None:
    """A SEARCH context answers at position 0 with sets in mailbox order (RFC 5267 4.3.3
    recommends it), and the client's copy follows."""
    old = [3, 5, 8, 13]
    new = [3, 8, 13, 21, 42]
    removals, additions = diff(old, new, ordered=False)
    assert removals == [(0, [5])] and additions == [(0, [21, 42])]
    assert apply_update(apply_update(old, "REMOVEFROM", removals), "ADDTO", additions) == new
    assert diff(old, old, ordered=False) == ([], [])


@pytest.mark.parametrize("seed", range(200))
def test_any_change_of_a_sorted_result_is_reproduced_by_the_client(seed: int) -> None:
    """For random old and new results (also reordered ones), applying the REMOVEFROM pairs
    and then the ADDTO pairs in order, as the client must, yields exactly the new result,
    and the kept messages are never removed and re-added without need."""
    rng = random.Random(seed)
    universe = list(range(1, 40))
    old = rng.sample(universe, rng.randint(0, 20))
    new = [u for u in old if rng.random() < 0.7] + rng.sample(
        [u for u in universe if u not in old], rng.randint(0, 10))
    if rng.random() < 0.5:
        rng.shuffle(new)
    else:
        new.sort(key=lambda u: (old.index(u) if u in old else rng.randint(0, 20), u))
    removals, additions = diff(old, new, ordered=True)
    mid = apply_update(old, "REMOVEFROM", removals)
    assert apply_update(mid, "ADDTO", additions) == new
    if all(u in new for u in old) and [u for u in new if u in old] == old:
        assert removals == []  # only additions when the old order survives


def test_apply_update_refuses_a_removal_of_what_is_not_there() -> None:
    """The client-side reference checks that a positional REMOVEFROM names the results at
    that position (so a wrong server position fails the tests above)."""
    with pytest.raises(ValueError):
        apply_update([1, 2, 3], "REMOVEFROM", [(1, [2])])


def _context(tag: str, uids: list[int], *, uid: bool = True, ordered: bool = False) -> Context:
    keys = ((SortKey.DATE, True),) if ordered else None
    return Context(tag, uid, All(), keys, uids)


def test_contexts_limit_and_tags() -> None:
    """At most ``max_contexts`` kept searches and ``max_kept`` results each; CANCELUPDATE
    forgets named ones and ignores unknown tags."""
    contexts = Contexts(max_contexts=2, max_kept=3)
    assert not contexts and contexts.refusal(3) is None
    assert contexts.refusal(4) is not None
    contexts.add(_context("a", [1]))
    contexts.add(_context("b", [2]))
    assert "a" in contexts and contexts.refusal(0) is not None
    with pytest.raises(ValueError):
        contexts.add(_context("a", []))
    contexts.cancel(["a", "nope"])
    assert "a" not in contexts and "b" in contexts and contexts.refusal(1) is None


def test_expunge_answers_removefrom_in_sequence_numbers_before_renumbering() -> None:
    """An expunge removes the message from every context holding it: by sequence number
    for SEARCH (position 0), at its position for SORT, by UID for UID contexts; contexts
    without it say nothing."""
    contexts = Contexts()
    contexts.add(_context("s", [10, 20, 30], uid=False))
    contexts.add(_context("o", [30, 20, 10], uid=False, ordered=True))
    contexts.add(_context("u", [20], uid=True))
    contexts.add(_context("x", [10], uid=True))
    seq = {10: 1, 20: 2, 30: 3}
    out = [to_bytes(r) for r in contexts.expunged([20], seq.__getitem__)]
    assert out == [
        b'* ESEARCH (TAG "s") REMOVEFROM (0 2)\r\n',
        b'* ESEARCH (TAG "o") REMOVEFROM (2 2)\r\n',
        b'* ESEARCH (TAG "u") UID REMOVEFROM (0 20)\r\n',
    ]
    assert [c.uids for c in contexts] == [[10, 30], [30, 10], [], [10]]


def test_changes_answer_removefrom_then_addto_in_one_response() -> None:
    """A re-run search that lost some and gained others answers one ESEARCH with REMOVEFROM
    first, then ADDTO; an unchanged one answers nothing."""
    contexts = Contexts()
    context = _context("B01", [3, 5], uid=True)
    contexts.add(context)
    update = contexts.changes(context, [3, 7, 8], lambda u: u)
    assert isinstance(update, ESearchData)
    assert to_bytes(update) == b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 5) ADDTO (0 7:8)\r\n'
    assert context.uids == [3, 7, 8]
    assert contexts.changes(context, [3, 7, 8], lambda u: u) is None
    ordered = _context("E01", [9, 4], uid=False, ordered=True)
    seq = {9: 5, 4: 2, 6: 3, 7: 4}
    update = contexts.changes(ordered, [9, 7, 6, 4], seq.__getitem__)
    assert update is not None
    assert to_bytes(update) == b'* ESEARCH (TAG "E01") ADDTO (2 4,3)\r\n'
