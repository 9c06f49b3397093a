"""SEARCH criteria: their SQL translation (pure) and their meaning on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from metadata.flags import DELETED, FLAGGED, SEEN, Flags
from metadata.search import (
    AllOf,
    AnyOf,
    BodyContains,
    Criterion,
    DateMatches,
    Everything,
    HasFlag,
    HasKeyword,
    HeaderContains,
    ModSeqAtLeast,
    Not,
    SizeMatches,
    TextContains,
    UidIn,
    compile_criteria,
    like_escape,
)
from metadata.store import MetadataStore
from metadata.uidset import UidSet
from tests.metadata_support import FAST_SCRYPT, fresh_database, sample_row

PARIS = dt.timezone(dt.timedelta(hours=2))
TOKYO = dt.timezone(dt.timedelta(hours=9))


def test_placeholders_are_numbered_from_first_param() -> None:
    """Parameters follow the caller's own ($1 user, $2 mailbox) in order of appearance."""
    compiled = compile_criteria(AllOf((HasKeyword("Work"), SizeMatches("larger", 10))),
                                first_param=3)
    assert "$3::text" in compiled.sql and "$4::bigint" in compiled.sql
    assert compiled.params == ("Work", 10)
    assert not compiled.needs_message


def test_unseen_uses_the_partial_index_predicate() -> None:
    """NOT SEEN compiles to the exact predicate of the unseen partial index."""
    assert compile_criteria(Not(HasFlag(SEEN))).sql == "(mm.flags & 1 = 0)"


def test_message_join_only_when_needed() -> None:
    """Criteria on messages columns ask for the join; entry-only criteria do not."""
    assert compile_criteria(HeaderContains("Subject", "x")).needs_message
    assert compile_criteria(BodyContains("x")).needs_message
    assert compile_criteria(DateMatches("sent", "on", dt.date(2024, 1, 1))).needs_message
    assert not compile_criteria(DateMatches("internal", "on", dt.date(2024, 1, 1))).needs_message
    assert not compile_criteria(BodyContains("")).needs_message


def test_like_escape_makes_wildcards_literal() -> None:
    """like_escape turns LIKE's wildcards and its escape character into literals."""
    assert like_escape("50%_off\\now") == "50\\%\\_off\\\\now"
    assert like_escape("plain") == "plain"


def test_values_never_reach_the_sql_text() -> None:
    """Search strings travel as parameters, so quotes cannot break out of the query."""
    evil = "x'); DROP TABLE users; --"
    compiled = compile_criteria(AnyOf((HeaderContains("X-Evil", evil), BodyContains(evil))))
    assert "DROP" not in compiled.sql
    assert evil.casefold() in compiled.params


def test_empty_combinations_and_bad_input() -> None:
    """An empty AnyOf matches nothing, an empty AllOf everything; junk is refused."""
    assert compile_criteria(AnyOf(())).sql == "FALSE"
    assert compile_criteria(AllOf(())).sql == "TRUE"
    assert compile_criteria(UidIn(UidSet(()))).sql == "FALSE"
    with pytest.raises(TypeError):
        compile_criteria("ALL")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HasFlag(3)


@pytest.fixture(scope="module")
def dsn(postgres: str) -> Iterator[str]:
    with fresh_database(postgres) as target:
        yield target


@pytest.fixture(scope="module")
def mailbox(dsn: str) -> tuple[int, int]:
    """A mailbox of five messages with known headers, bodies, dates, sizes and flags."""

    async def build() -> tuple[int, int]:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT)
        try:
            user = await store.users.create("searcher", "pw")
            inbox = (await store.mailboxes.get(user.id, "INBOX")).id
            rows = [
                (sample_row("s1", size=500, subject="Quarterly Invoice", from_addr="Émile Zola "
                            "<emile@example.fr>", body_text="Please find the invoice attached.",
                            sent_at=dt.datetime(2024, 3, 1, 23, 30, tzinfo=PARIS)),
                 dt.datetime(2024, 3, 2, 0, 30, tzinfo=PARIS), Flags(SEEN)),
                (sample_row("s2", size=1500, subject="Lunch?", from_addr="bob@example.org",
                            body_text="Are we still on for lunch tomorrow?",
                            headers=(("From", "bob@example.org"), ("Subject", "Lunch?"),
                                     ("X-Spam-Flag", "YES"))),
                 dt.datetime(2024, 3, 3, 8, 0, tzinfo=TOKYO), Flags(FLAGGED, ("Work",))),
                (sample_row("s3", size=3000, subject="ÜBER wichtige Nachricht",
                            from_addr="Jürgen <j@example.de>", body_text="Grüße aus Köln"),
                 dt.datetime(2024, 3, 4, 12, 0, tzinfo=dt.UTC), Flags(SEEN | DELETED)),
                (sample_row("s4", size=100, subject="", from_addr="", body_text="",
                            headers=()),
                 dt.datetime(2024, 3, 5, 12, 0, tzinfo=dt.UTC), Flags()),
                (sample_row("s5", size=2000, subject="Re: Quarterly Invoice",
                            from_addr="alice@example.org",
                            body_text="Thanks, paid. See 'quoted' text and back\\slash."),
                 dt.datetime(2024, 3, 6, 12, 0, tzinfo=dt.UTC), Flags(0, ("Work", "$Done"))),
            ]
            for row, when, flags in rows:
                await store.messages.insert(user.id, inbox, row, [], internaldate=when,
                                            flags=flags)
            return user.id, inbox
        finally:
            await store.close()

    return asyncio.run(build())


CASES: list[tuple[str, Criterion, tuple[int, ...]]] = [
    ("all", Everything(), (1, 2, 3, 4, 5)),
    ("seen", HasFlag(SEEN), (1, 3)),
    ("unseen", Not(HasFlag(SEEN)), (2, 4, 5)),
    ("deleted", HasFlag(DELETED), (3,)),
    ("keyword", HasKeyword("Work"), (2, 5)),
    ("unkeyword", Not(HasKeyword("Work")), (1, 3, 4)),
    ("subject substring any case", HeaderContains("SUBJECT", "invoice"), (1, 5)),
    ("subject unicode case folding", HeaderContains("Subject", "über"), (3,)),
    ("from display name accents", HeaderContains("From", "ÉMILE"), (1,)),
    ("from address", HeaderContains("from", "@example.org"), (2, 5)),
    ("any header by name", HeaderContains("X-Spam-Flag", "yes"), (2,)),
    ("header presence", HeaderContains("x-spam-flag", ""), (2,)),
    ("header absent value", HeaderContains("X-Spam-Flag", "no"), ()),
    ("subject presence", HeaderContains("Subject", ""), (1, 2, 3, 5)),
    ("body word", BodyContains("invoice"), (1,)),
    ("body word prefix", BodyContains("invoic"), (1,)),
    ("body inside a word", BodyContains("NVOIC"), (1,)),
    ("body phrase", BodyContains("lunch tomorrow"), (2,)),
    ("body words missing", BodyContains("lunch yesterday"), ()),
    ("body words apart are no substring", BodyContains("still lunch"), ()),
    ("body full case folding (ß = SS)", BodyContains("GRÜSSE"), (3,)),
    ("body unicode same spelling", BodyContains("grüße aus köln"), (3,)),
    ("body short string", BodyContains("ß"), (3,)),
    ("body percent is literal", BodyContains("%"), ()),
    ("body underscore is literal", BodyContains("a_d"), ()),
    ("body backslash is literal", BodyContains("k\\s"), (5,)),
    ("body ignores headers", BodyContains("quarterly"), ()),
    ("text sees headers", TextContains("quarterly"), (1, 5)),
    ("body with quotes", BodyContains("'quoted' text and back\\slash"), (5,)),
    ("body punctuation", BodyContains("!!!"), ()),
    ("body punctuation inside", BodyContains("d. s"), (5,)),
    ("not body punctuation", Not(BodyContains("!!!")), (1, 2, 3, 4, 5)),
    ("body empty", BodyContains(""), (1, 2, 3, 4, 5)),
    ("internal on, own zone", DateMatches("internal", "on", dt.date(2024, 3, 2)), (1,)),
    ("internal on, tokyo", DateMatches("internal", "on", dt.date(2024, 3, 3)), (2,)),
    ("internal before", DateMatches("internal", "before", dt.date(2024, 3, 4)), (1, 2)),
    ("internal since", DateMatches("internal", "since", dt.date(2024, 3, 4)), (3, 4, 5)),
    ("sent on, own zone", DateMatches("sent", "on", dt.date(2024, 3, 1)), (1,)),
    ("sent missing never matches", DateMatches("sent", "since", dt.date(1970, 1, 1)), (1,)),
    ("not sent, null-safe", Not(DateMatches("sent", "before", dt.date(2000, 1, 1))),
     (1, 2, 3, 4, 5)),
    ("larger", SizeMatches("larger", 1500), (3, 5)),
    ("smaller", SizeMatches("smaller", 500), (4,)),
    ("uid ranges", UidIn(UidSet.of([(1, 2), (5, 9)])), (1, 2, 5)),
    ("modseq", ModSeqAtLeast(5), (4, 5)),
    ("or", AnyOf((HasFlag(DELETED), HasKeyword("$Done"))), (3, 5)),
    ("and", AllOf((HasKeyword("Work"), Not(HasFlag(FLAGGED)))), (5,)),
    ("nested", Not(AnyOf((HasFlag(SEEN),
                          AllOf((HasKeyword("Work"), SizeMatches("larger", 1000)))))), (4,)),
]


@pytest.mark.parametrize(("label", "criterion", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_search(dsn: str, mailbox: tuple[int, int], label: str, criterion: Criterion,
                expected: tuple[int, ...]) -> None:
    """Each criterion finds exactly the expected messages of the sample mailbox."""

    async def run() -> tuple[tuple[int, ...], int | None]:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=1, check_schema=False)
        try:
            hits = await store.messages.search(*mailbox, criterion)
            return hits.uids, hits.highest_modseq
        finally:
            await store.close()

    uids, highest = asyncio.run(run())
    assert uids == expected, label
    # Each sample message was delivered at mod-sequence uid + 1 and never changed.
    assert highest == (max(expected) + 1 if expected else None)


def test_body_search_is_served_by_the_trigram_index(dsn: str) -> None:
    """For a user with many messages among others, PostgreSQL answers BODY and TEXT for a
    string of three characters or more from the GIN trigram indexes (a small mailbox is
    walked instead, which is cheaper)."""

    async def plans() -> tuple[str, str]:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=1,
                                         password_params=FAST_SCRYPT)
        try:
            async with store.db.connection() as conn:
                users: list[int] = [r["id"] for r in await conn.fetch(
                    "INSERT INTO users (name, password_hash) SELECT 'bulk' || n, 'x' "
                    "FROM generate_series(1, 41) AS n RETURNING id")]
                # Half the rows are one user's; headers and bodies of a few hundred bytes.
                await conn.execute(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, section_map, search_header, search_body) "
                    "SELECT CASE WHEN i <= 20000 THEN u[1] ELSE u[2 + i % 40] END, "
                    "decode(md5(i::text) || md5(i::text), 'hex'), 10, '', '', '', '', "
                    "'subject: ' || md5(i::text) || repeat(' ' || md5((i * 5)::text), 8), "
                    "md5(i::text) || repeat(' ' || md5((i * 3)::text), 10) "
                    "FROM generate_series(1, 40000) AS i, CAST($1 AS bigint[]) AS u", users)
                await conn.execute("ANALYZE messages")
                out = []
                for criterion in (BodyContains("c4ca4238a0"), TextContains("c4ca4238a0")):
                    compiled = compile_criteria(criterion, first_param=2)
                    rows = await conn.fetch(
                        "EXPLAIN SELECT m.id FROM messages m WHERE m.user_id = $1 AND "
                        f"{compiled.sql}", users[0], *compiled.params)
                    out.append("\n".join(r[0] for r in rows))
            return out[0], out[1]
        finally:
            await store.close()

    body, text = asyncio.run(plans())
    assert "messages_search_body_trgm_idx" in body, body
    assert "messages_search_header_trgm_idx" in text, text
    assert "messages_search_body_trgm_idx" in text, text


def test_header_search_reads_lines_or_the_field_list(dsn: str) -> None:
    """SEARCH HEADER answers the same from a row's search_header lines (schema 6: its
    header_fields is stored empty) as from the jsonb field list, which is kept for a
    value with a line break and for rows stored before."""

    async def run() -> tuple[dict[str, tuple[int, ...]], dict[int, str]]:
        store = await MetadataStore.open(dsn, pool_min=1, pool_max=1,
                                         password_params=FAST_SCRYPT)
        try:
            user = await store.users.create("header-lines", "pw")
            inbox = (await store.mailboxes.get(user.id, "INBOX")).id
            headers = [(("X-Multi", "line one\nline two"), ("Subject", "s")),
                       (("X", "y: secret"), ("X-Long", "Ünïcode ÅBC")),
                       (("X-Old", "kept"),)]
            when = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
            for n, fields in enumerate(headers):
                await store.messages.insert(user.id, inbox, sample_row(f"h{n}", headers=fields),
                                            [], internaldate=when)
            async with store.db.connection() as conn:
                # A row as schema 5 stored it: the list filled, the text of other words.
                await conn.execute(
                    "UPDATE messages SET header_fields = '[[\"x-old\", \"kept\"]]', "
                    "search_header = 'unrelated words' WHERE user_id = $1 AND id = "
                    "(SELECT max(id) FROM messages WHERE user_id = $1)", user.id)
                stored = {r["id"]: r["f"] for r in await conn.fetch(
                    "SELECT id, header_fields::text AS f FROM messages WHERE user_id = $1 "
                    "ORDER BY id", user.id)}
            queries = {
                "value across the line break": HeaderContains("x-multi", "one\nline"),
                "name only": HeaderContains("X-MULTI", ""),
                "value after a colon": HeaderContains("X", "SECRET"),
                "name with a colon is no prefix": HeaderContains("x: y", ""),
                "name with a colon and value": HeaderContains("X: Y", "secret"),
                "unicode value folded": HeaderContains("x-long", "åbc"),
                "not another field's value": HeaderContains("x-long", "secret"),
                "old row's list": HeaderContains("X-Old", "KEPT"),
                "old row's list only": HeaderContains("unrelated", ""),
                "no such field": HeaderContains("X-None", ""),
            }
            found = {label: (await store.messages.search(user.id, inbox, c)).uids
                     for label, c in queries.items()}
            return found, stored
        finally:
            await store.close()

    found, stored = asyncio.run(run())
    assert found == {
        "value across the line break": (1,),
        "name only": (1,),
        "value after a colon": (2,),
        "name with a colon is no prefix": (),
        "name with a colon and value": (),
        "unicode value folded": (2,),
        "not another field's value": (),
        "old row's list": (3,),
        "old row's list only": (),
        "no such field": (),
    }
    first, second, _third = sorted(stored)
    assert stored[first] != "[]"  # a value with a line break keeps the list
    assert stored[second] == "[]"  # the lines hold it


def _bulk_mailbox_sql() -> list[str]:
    """A user ($1) with 20,000 entries in one mailbox ($2) among 40 others' 20,000 messages,
    bodies and headers of a few hundred bytes (hex words: each string is rare)."""
    return [
        "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
        "bodystructure, section_map, search_header, search_body) "
        "SELECT CASE WHEN i <= 20000 THEN $1 ELSE o[1 + i % 40] END, "
        "decode(md5(i::text) || md5(i::text), 'hex'), 10, '', '', '', '', "
        "'subject: ' || md5(i::text) || repeat(' ' || md5((i * 5)::text), 8), "
        "md5(i::text) || repeat(' ' || md5((i * 3)::text), 10) "
        "FROM generate_series(1, 40000) AS i, CAST($2 AS bigint[]) AS o",
        "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, flags, modseq, "
        "internaldate, internaldate_offset, size) "
        "SELECT $1, $2, row_number() OVER (ORDER BY id), id, 0, 1, now(), 0, 10 "
        "FROM messages WHERE user_id = $1",
        "UPDATE mailboxes SET uidnext = 20001 WHERE user_id = $1 AND id = $2",
    ]


def test_substring_search_is_planned_for_its_parameters_at_every_run(dsn: str) -> None:
    """SEARCH, SORT and THREAD with a substring test run as one statement on the search
    pool, planned for their parameters at every run: no generic plan after the fifth run,
    which the same prepared statement on the main pool gets; over a 20,000-message
    mailbox the plan reads the trigram index."""

    async def run(target: str) -> None:
        store = await MetadataStore.open(target, pool_min=1, pool_max=2,
                                         password_params=FAST_SCRYPT, statement_timeout=None,
                                         search_timeout=30.0)
        try:
            user = await store.users.create("big", "pw")
            inbox = (await store.mailboxes.get(user.id, "INBOX")).id
            others = [(await store.users.create(f"other{n}", "pw")).id for n in range(40)]
            async with store.db.connection() as conn:
                insert, enter, uidnext = _bulk_mailbox_sql()
                await conn.execute(insert, user.id, others)
                await conn.execute(enter, user.id, inbox)
                await conn.execute(uidnext, user.id, inbox)
                await conn.execute("ANALYZE")
            needle = BodyContains("c4ca4238a0")  # md5('1'): message 1's body
            for _ in range(8):
                assert (await store.messages.search(user.id, inbox, needle)).uids == (1,)
                assert await store.messages.sort_order(
                    user.id, inbox, needle, [("SUBJECT", False)]) == [(1, 1)]
                assert [e.uid for e in await store.messages.thread_entries(
                    user.id, inbox, needle, links=True)] == [1]
            compiled = compile_criteria(needle, first_param=3)
            query = ("SELECT mm.uid, mm.modseq FROM mailbox_messages mm JOIN messages m "
                     "ON m.user_id = $1 AND m.id = mm.message_id WHERE mm.user_id = $1 AND "
                     f"mm.mailbox_id = $2 AND {compiled.sql} ORDER BY mm.uid")
            async with store.db.search_connection() as conn:
                plans = await conn.fetch(
                    "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement LIKE '%ILIKE%' AND statement NOT LIKE '%pg_prepared%'")
                settings = await conn.fetchrow(
                    "SELECT current_setting('plan_cache_mode') AS mode, "
                    "current_setting('statement_timeout') AS timeout")
                plan = "\n".join(r[0] for r in await conn.fetch(
                    f"EXPLAIN {query}", user.id, inbox, *compiled.params))
            assert query in [r["statement"] for r in plans]
            assert len(plans) == 3, plans  # SEARCH, SORT, THREAD
            # (8 runs each; the first SORT runs twice: the bulk rows had no sort keys yet.)
            assert all(r["generic_plans"] == 0 and r["custom_plans"] >= 8 for r in plans), plans
            assert (settings["mode"], settings["timeout"]) == ("force_custom_plan", "30s")
            assert "messages_search_body_trgm_idx" in plan, plan
            # Why: on a connection without the setting the same statement goes generic.
            for _ in range(8):
                async with store.db.connection() as conn:
                    await conn.fetch(query, user.id, inbox, *compiled.params)
            async with store.db.connection() as conn:
                generic = await conn.fetchval(
                    "SELECT generic_plans FROM pg_prepared_statements WHERE statement = $1",
                    query)
            assert generic > 0
        finally:
            await store.close()

    with fresh_database(dsn) as target:
        asyncio.run(run(target))
