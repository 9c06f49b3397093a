"""SORT ordered by PostgreSQL and THREAD over narrowed rows give exactly what the Python
reference gives over the full rows (tests/sort_reference.py over
:meth:`metadata.messages.Messages.sort_entries`), on the real messages of the corpus.

The corpus is delivered twice, the second time in reverse order, so every Message-ID is
repeated, subjects and dates tie, and UID order differs from date order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

import pytest

from imapd.commands import SortKey
from imapd.threads import ordered_subject, references
from metadata.errors import MessageTooBig
from metadata.search import AllOf, Criterion, Everything, HeaderContains, Not, SizeMatches
from tests import sort_reference as reference
from tests.conftest import CORPUS
from tests.corpus_features import feature_rows
from tests.imapd_support import Env, environment
from tests.metadata_support import fresh_database

_USER = "sorter"
T = TypeVar("T")


@pytest.fixture(scope="module")
def corpus_box(postgres: str) -> Iterator[tuple[str, int, int]]:
    """A database whose user :data:`_USER` has the corpus twice in INBOX: (dsn, user id,
    mailbox id).  Its default collation is linguistic (ICU ``en-US``), as a database
    created under a locale has, which orders text unlike RFC 5256 does."""
    rows = feature_rows()
    if not rows:
        pytest.skip("the corpus is not there")
    raws = [(CORPUS / r["source"] / r["path"]).read_bytes() for r in rows]

    async def fill(dsn: str) -> tuple[int, int]:
        async with environment(dsn) as env:
            user = await env.user(_USER)
            for raw in [*raws, *reversed(raws)]:
                with contextlib.suppress(MessageTooBig):  # beyond the default limit
                    await env.deliver(_USER, raw)
            mailbox = await env.store.mailboxes.get(user.id, "INBOX")
            return user.id, mailbox.id

    with fresh_database(postgres, icu_locale="en-US") as dsn:
        user_id, mailbox_id = asyncio.run(fill(dsn))
        yield dsn, user_id, mailbox_id


_CRITERIA: dict[str, Criterion] = {
    "all": Everything(),
    "larger": SizeMatches("larger", 3000),
    "not-subject-re": AllOf((Not(HeaderContains("subject", "re")),)),
}

_KEYS: list[tuple[tuple[SortKey, bool], ...]] = [
    *(((key, reverse),) for key in SortKey for reverse in (False, True)),
    ((SortKey.SUBJECT, False), (SortKey.DATE, True)),
    ((SortKey.DISPLAYFROM, False), (SortKey.SIZE, False)),
    ((SortKey.FROM, True), (SortKey.ARRIVAL, False)),
    ((SortKey.CC, False), (SortKey.TO, False), (SortKey.SUBJECT, True)),
    ((SortKey.DISPLAYTO, True), (SortKey.DATE, False)),
]


def _name(keys: Sequence[tuple[SortKey, bool]]) -> str:
    return "+".join(("REVERSE-" if reverse else "") + key.value for key, reverse in keys)


def _run(dsn: str, body: Callable[[Env], Awaitable[T]]) -> T:
    async def main() -> T:
        async with environment(dsn) as env:
            return await body(env)

    return asyncio.run(main())


@pytest.mark.parametrize("criterion", list(_CRITERIA), ids=list(_CRITERIA))
@pytest.mark.parametrize("keys", _KEYS, ids=[_name(k) for k in _KEYS])
def test_sort_order_is_the_python_order(corpus_box: tuple[str, int, int],
                                        keys: tuple[tuple[SortKey, bool], ...],
                                        criterion: str) -> None:
    """PostgreSQL's order of every SORT key, REVERSE or not, alone and combined, is the
    in-memory sort of the full rows: same UIDs, same mod-sequences, same order."""
    dsn, user_id, mailbox_id = corpus_box

    async def body(env: Env) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        messages = env.store.messages
        full = await messages.sort_entries(user_id, mailbox_id, _CRITERIA[criterion])
        expected = [(e.uid, e.modseq) for e in reference.sort_entries(full, keys)]
        found = await messages.sort_order(user_id, mailbox_id, _CRITERIA[criterion],
                                          [(k.value, r) for k, r in keys])
        return found, expected

    found, expected = _run(dsn, body)
    assert found == expected
    assert len(expected) > (400 if criterion == "all" else 50)


@pytest.mark.parametrize("criterion", list(_CRITERIA), ids=list(_CRITERIA))
@pytest.mark.parametrize("algorithm", ["REFERENCES", "ORDEREDSUBJECT"])
def test_threads_are_the_reference_threads(corpus_box: tuple[str, int, int], algorithm: str,
                                           criterion: str) -> None:
    """Both THREAD algorithms over the narrowed rows (rank, subject, and for REFERENCES the
    ids) build the threads the reference builds over the full rows."""
    dsn, user_id, mailbox_id = corpus_box
    links = algorithm == "REFERENCES"

    async def body(env: Env) -> tuple[list[reference.Shape], list[reference.Shape]]:
        messages = env.store.messages
        full = await messages.sort_entries(user_id, mailbox_id, _CRITERIA[criterion])
        narrowed = await messages.thread_entries(user_id, mailbox_id, _CRITERIA[criterion],
                                                 links=links)
        assert [e.uid for e in narrowed] == [e.uid for e in full]
        if links:
            return ([reference.shape(n) for n in references(narrowed)],
                    [reference.shape(n) for n in reference.references(full)])
        return ([reference.shape(n) for n in ordered_subject(narrowed)],
                [reference.shape(n) for n in reference.ordered_subject(full)])

    found, expected = _run(dsn, body)
    assert found == expected
    if links and criterion == "all":
        # The corpus does thread: some message has a parent or a sibling under a dummy.
        assert any(children for _, children in expected)


def test_keys_older_than_their_columns_are_computed_then_ordered(
        corpus_box: tuple[str, int, int]) -> None:
    """Rows without stored keys (older than migration 0003) get them from their header
    block before PostgreSQL orders or THREAD reads them: the same order and threads as
    with the keys stored at delivery, and the keys written back."""
    dsn, user_id, mailbox_id = corpus_box
    keys = [("SUBJECT", False), ("DISPLAYFROM", True)]

    async def body(env: Env) -> None:
        messages = env.store.messages
        before = await messages.sort_order(user_id, mailbox_id, Everything(), keys)
        threads = await messages.thread_entries(user_id, mailbox_id, Everything(), links=True)
        columns = ("sort_subject, sort_reply, sort_from, sort_to, sort_cc, display_from, "
                   "display_to, thread_message_id, thread_references")
        async with env.store.db.connection() as conn:
            stored = await conn.fetch(f"SELECT id, {columns} FROM messages "
                                      "WHERE user_id = $1 ORDER BY id", user_id)
            await conn.execute(f"UPDATE messages SET ({columns}) = (NULL, NULL, NULL, NULL, "
                               "NULL, NULL, NULL, NULL, NULL) WHERE user_id = $1", user_id)
        assert await messages.sort_order(user_id, mailbox_id, Everything(), keys) == before
        async with env.store.db.connection() as conn:
            await conn.execute("UPDATE messages SET sort_subject = NULL, "
                               "thread_references = NULL WHERE user_id = $1", user_id)
        assert await messages.thread_entries(user_id, mailbox_id, Everything(),
                                             links=True) == threads
        async with env.store.db.connection() as conn:
            again = await conn.fetch(f"SELECT id, {columns} FROM messages "
                                     "WHERE user_id = $1 ORDER BY id", user_id)
        assert [tuple(r) for r in again] == [tuple(r) for r in stored]

    _run(dsn, body)
