"""Versioned migrations against a real PostgreSQL, and the shape of the resulting schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path

import asyncpg
import pytest

from metadata.errors import SchemaError
from metadata.migrate import (
    MIGRATIONS_DIR,
    Migration,
    check_schema,
    load_migrations,
    migrate,
    migrate_dsn,
    status,
    status_dsn,
)
from tests.metadata_support import fresh_database

#: How many migrations ship, and the version a test's extra migration takes.
SHIPPED = len(load_migrations())
NEXT = SHIPPED + 1

TABLES = {"schema_migrations", "users", "user_usage", "mailboxes", "subscriptions", "messages",
          "message_blobs", "mailbox_messages", "expunged_uids"}


def copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_shipped_migrations_load_in_order() -> None:
    """The packaged migrations run 1, 2, ... and carry a SHA-256 of their bytes."""
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert all(len(m.checksum) == 64 for m in migrations)


@pytest.mark.parametrize("files", [
    ["0001_a.sql", "0003_c.sql"],
    ["0001_a.sql", "0001_b.sql"],
    ["1_a.sql"],
    ["0001_Bad-Name.sql"],
])
def test_load_refuses_bad_sets(tmp_path: Path, files: list[str]) -> None:
    """Gaps, repeated versions and badly named files are refused when loading."""
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(SchemaError):
        load_migrations(tmp_path)


def test_migrate_twice_is_a_no_op(postgres: str) -> None:
    """The first migrate creates every table and records version 1; the second applies
    nothing and leaves the record untouched; status moves from pending to applied."""
    with fresh_database(postgres, migrate=False) as dsn:
        assert [s.state for s in status_dsn(dsn)] == ["pending"] * SHIPPED
        first = migrate_dsn(dsn)
        assert [m.version for m in first] == list(range(1, NEXT))
        rows = asyncio.run(fetch(dsn, "SELECT * FROM schema_migrations"))
        assert migrate_dsn(dsn) == []
        assert asyncio.run(fetch(dsn, "SELECT * FROM schema_migrations")) == rows
        assert [s.state for s in status_dsn(dsn)] == ["applied"] * SHIPPED
        tables = {r["tablename"] for r in asyncio.run(fetch(
            dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))}
        assert tables == TABLES


def test_concurrent_migrators_apply_once(postgres: str) -> None:
    """Two processes migrating at once apply each migration exactly once."""
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> list[list[int]]:
            conns = [await asyncpg.connect(dsn) for _ in range(2)]
            try:
                done = await asyncio.gather(*(migrate(c) for c in conns))
                return [[m.version for m in d] for d in done]
            finally:
                for c in conns:
                    await c.close()

        assert sorted(asyncio.run(run())) == [[], list(range(1, NEXT))]


def test_edited_applied_migration_is_refused(postgres: str, tmp_path: Path) -> None:
    """After a migration file changes, migrate and check_schema refuse and status says
    modified; restoring the file makes the database acceptable again."""
    directory = copy_migrations(tmp_path)
    with fresh_database(postgres, migrate=False) as dsn:
        migrate_dsn(dsn, load_migrations(directory))
        path = directory / "0001_initial.sql"
        original = path.read_bytes()
        path.write_bytes(original + b"\n-- an innocent-looking edit\n")
        edited = load_migrations(directory)
        with pytest.raises(SchemaError, match="changed after it was applied"):
            migrate_dsn(dsn, edited)
        assert [s.state for s in status_dsn(dsn, edited)] == (
            ["modified"] + ["applied"] * (SHIPPED - 1))

        async def check(migs: list[Migration]) -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await check_schema(conn, migs)
            finally:
                await conn.close()

        with pytest.raises(SchemaError):
            asyncio.run(check(edited))
        path.write_bytes(original)
        asyncio.run(check(load_migrations(directory)))


def test_newer_database_and_pending_migrations_are_refused(postgres: str,
                                                           tmp_path: Path) -> None:
    """A database with a version this release does not know is refused; check_schema
    names pending migrations."""
    directory = copy_migrations(tmp_path)
    (directory / f"{NEXT:04d}_add_column.sql").write_text(
        "ALTER TABLE users ADD COLUMN nickname text;")
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations(MIGRATIONS_DIR))
                with pytest.raises(SchemaError, match=f"pending: {NEXT:04d}_add_column"):
                    await check_schema(conn, load_migrations(directory))
                assert [m.version for m in await migrate(conn, load_migrations(directory))] == [
                    NEXT]
                await check_schema(conn, load_migrations(directory))
                states = await status(conn, load_migrations(MIGRATIONS_DIR))
                assert [s.state for s in states] == ["applied"] * SHIPPED + ["unknown"]
                with pytest.raises(SchemaError, match="newer than this code"):
                    await migrate(conn, load_migrations(MIGRATIONS_DIR))
            finally:
                await conn.close()

        asyncio.run(run())


def test_failing_migration_rolls_back_alone(postgres: str, tmp_path: Path) -> None:
    """A migration whose SQL fails leaves nothing of itself behind and is not recorded;
    the migrations before it stay applied."""
    directory = copy_migrations(tmp_path)
    (directory / f"{NEXT:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    with fresh_database(postgres, migrate=False) as dsn:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            migrate_dsn(dsn, load_migrations(directory))
        states = status_dsn(dsn, load_migrations(directory))
        assert [s.state for s in states] == ["applied"] * SHIPPED + ["pending"]
        tables = {r["tablename"] for r in asyncio.run(fetch(
            dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))}
        assert "half_done" not in tables and "users" in tables


def test_per_user_keys_and_indexes_lead_with_user_id(postgres: str) -> None:
    """Every table with a user_id column (the Citus distribution column) starts its primary
    key and every index with it, except the one index gc uses to look blobs up."""
    with fresh_database(postgres) as dsn:
        rows = asyncio.run(fetch(dsn, """
            SELECT t.relname AS tbl, i.relname AS idx, a.attname AS first_col,
                   x.indisprimary AS pk, pg_get_indexdef(x.indexrelid) AS def
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
            LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
            WHERE EXISTS (SELECT 1 FROM pg_attribute u WHERE u.attrelid = t.oid
                          AND u.attname = 'user_id' AND NOT u.attisdropped)"""))
        assert {r["tbl"] for r in rows} == TABLES - {"schema_migrations", "users"}
        offenders = [r["idx"] for r in rows if r["first_col"] != "user_id"]
        assert offenders == ["message_blobs_blob_idx"]
        gin = [r["def"] for r in rows if r["idx"] == "messages_search_body_trgm_idx"]
        assert gin and "gin (user_id, search_body gin_trgm_ops)" in gin[0]
        partial = {r["idx"]: r["def"] for r in rows if "WHERE" in r["def"]}
        assert "mailbox_messages_unseen_idx" in partial


def test_version_2_keeps_old_rows_searchable_and_lists_mailbox_keywords(
        postgres: str) -> None:
    """Migrating a version-1 database gives old messages the words of their vector as
    search text (headers and body apart) and each mailbox the keywords its entries carry."""
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> tuple[asyncpg.Record, list[str]]:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations()[:1])
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                box = await conn.fetchval(
                    "INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) "
                    "VALUES ($1, 'INBOX', 1, 3) RETURNING id", user)
                msg = await conn.fetchval(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, body, section_map, search_vector) VALUES ($1, $2, 10, '', "
                    "'', '', '', '', setweight(to_tsvector('simple', 'subject: hello'), 'A') "
                    "|| setweight(to_tsvector('simple', 'an invoice'), 'D')) RETURNING id",
                    user, "0" * 64)
                for uid, keywords in ((1, ["$Label1"]), (2, ["$Label2", "$Label1"])):
                    await conn.execute(
                        "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, "
                        "keywords, modseq, internaldate, size) VALUES ($1, $2, $3, $4, $5, 1, "
                        "now(), 10)", user, box, uid, msg, keywords)
                await migrate(conn)
                row = await conn.fetchrow(
                    "SELECT search_header, search_body FROM messages WHERE id = $1", msg)
                keywords = await conn.fetchval("SELECT keywords FROM mailboxes WHERE id = $1",
                                               box)
                return row, keywords
            finally:
                await conn.close()

        row, keywords = asyncio.run(run())
        assert sorted(row["search_header"].split()) == ["hello", "subject"]
        assert sorted(row["search_body"].split()) == ["an", "invoice"]
        assert keywords == ["$Label1", "$Label2"]


def test_version_4_counts_the_entries_already_stored(postgres: str) -> None:
    """Migrating a version-3 database fills each mailbox's MESSAGES, UNSEEN, \\Deleted and
    SIZE counters from the entries it already holds; later changes keep them exact."""
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> tuple[asyncpg.Record, asyncpg.Record]:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations()[:3])
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                box = await conn.fetchval(
                    "INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) "
                    "VALUES ($1, 'INBOX', 1, 4) RETURNING id", user)
                msg = await conn.fetchval(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, body, section_map) VALUES ($1, $2, 10, '', '', '', '', '') "
                    "RETURNING id", user, "0" * 64)
                for uid, flags in ((1, 1), (2, 0), (3, 8)):  # \Seen, none, \Deleted
                    await conn.execute(
                        "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, "
                        "flags, modseq, internaldate, size) VALUES ($1, $2, $3, $4, $5, 1, "
                        "now(), $6)", user, box, uid, msg, flags, uid * 100)
                await migrate(conn)
                query = ("SELECT n_messages, n_unseen, n_deleted, total_size FROM mailboxes "
                         "WHERE id = $1")
                backfilled = await conn.fetchrow(query, box)
                await conn.execute("UPDATE mailbox_messages SET flags = flags | 1 "
                                   "WHERE mailbox_id = $1", box)
                await conn.execute("DELETE FROM mailbox_messages WHERE mailbox_id = $1 "
                                   "AND uid = 1", box)
                return backfilled, await conn.fetchrow(query, box)
            finally:
                await conn.close()

        backfilled, after = asyncio.run(run())
        assert tuple(backfilled) == (3, 2, 1, 600)
        assert tuple(after) == (2, 0, 1, 500)


def test_version_5_adds_the_message_quota_and_backfills_deleted_bytes(postgres: str) -> None:
    """Migrating a version-4 database gives every user an unlimited message quota and each
    mailbox the bytes of its \\Deleted entries, which later changes keep exact."""
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> tuple[int, int, int]:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations()[:4])
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                await conn.execute("INSERT INTO user_usage (user_id) VALUES ($1)", user)
                box = await conn.fetchval(
                    "INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) "
                    "VALUES ($1, 'INBOX', 1, 4) RETURNING id", user)
                msg = await conn.fetchval(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, body, section_map) VALUES ($1, $2, 10, '', '', '', '', '') "
                    "RETURNING id", user, "0" * 64)
                for uid, flags in ((1, 8), (2, 0), (3, 8)):  # \Deleted, none, \Deleted
                    await conn.execute(
                        "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, "
                        "flags, modseq, internaldate, size) VALUES ($1, $2, $3, $4, $5, 1, "
                        "now(), $6)", user, box, uid, msg, flags, uid * 100)
                await migrate(conn)
                quota = await conn.fetchval(
                    "SELECT quota_messages FROM user_usage WHERE user_id = $1", user)
                query = "SELECT deleted_size FROM mailboxes WHERE id = $1"
                backfilled = await conn.fetchval(query, box)
                await conn.execute("UPDATE mailbox_messages SET flags = 8 WHERE mailbox_id = $1 "
                                   "AND uid = 2", box)
                await conn.execute("DELETE FROM mailbox_messages WHERE mailbox_id = $1 "
                                   "AND uid = 1", box)
                return quota, backfilled, await conn.fetchval(query, box)
            finally:
                await conn.close()

        assert asyncio.run(run()) == (0, 400, 500)


def test_version_6_keeps_old_rows_and_runs_twice(postgres: str) -> None:
    """Migrating a version-5 database leaves a stored row as it was (its field list is
    what SEARCH HEADER reads for it) and says what the empty list means; applying the
    file a second time changes nothing."""
    with fresh_database(postgres, migrate=False) as dsn:
        async def run() -> tuple[str, str]:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations()[:5])
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                old = await conn.fetchval(
                    "INSERT INTO messages (user_id, skeleton_id, size, header_block, envelope, "
                    "bodystructure, body, section_map, header_fields, search_header) VALUES "
                    "($1, $2, 10, '', '', '', '', '', '[[\"x\", \"y\"]]', 'x: y') RETURNING id",
                    user, "0" * 64)
                await migrate(conn)
                await conn.execute(load_migrations()[5].sql)  # idempotent
                fields = await conn.fetchval(
                    "SELECT header_fields::text FROM messages WHERE id = $1", old)
                comment = await conn.fetchval(
                    "SELECT col_description('messages'::regclass, attnum) FROM pg_attribute "
                    "WHERE attrelid = 'messages'::regclass AND attname = 'header_fields'")
                return fields, comment
            finally:
                await conn.close()

        fields, comment = asyncio.run(run())
        assert fields == '[["x", "y"]]'
        assert "since schema 6" in comment


def test_compact_drops_only_the_field_lists_the_lines_repeat(postgres: str) -> None:
    """`compact_batch` empties header_fields where search_header's lines say the same, in
    key order and resumable, and leaves the lists the lines cannot stand for."""
    from metadata.compact import compact_batch

    with fresh_database(postgres) as dsn:
        async def run() -> tuple[list[tuple[int, int, int | None]], dict[str, str]]:
            conn = await asyncpg.connect(dsn)
            try:
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                rows = {  # label: (header_fields, search_header) as schema 5 stored them
                    "same": ('[["subject", "hi"], ["x-a", "b: c"]]', "subject: hi\nx-a: b: c"),
                    "break": ('[["x", "a\\nb"]]', "x: a\nb"),
                    "colon": ('[["x:y", "z"]]', "x:y: z"),
                    "words": ('[["subject", "hi"]]', "hi subject"),
                    "empty": ("[]", ""),
                }
                ids = {}
                for label, (fields, text) in rows.items():
                    ids[label] = await conn.fetchval(
                        "INSERT INTO messages (user_id, skeleton_id, size, header_block, "
                        "envelope, bodystructure, section_map, header_fields, "
                        "search_header) VALUES ($1, $2, 10, '', '', '', '', $3::jsonb, $4) "
                        "RETURNING id", user, bytes(32), fields, text)
                batches = []
                after = (0, 0)
                while True:
                    done = await compact_batch(conn, after, 2)
                    batches.append((done.seen, done.changed,
                                    None if done.last is None else done.last[1]))
                    if done.last is None:
                        break
                    after = done.last
                fields_now = {label: await conn.fetchval(
                    "SELECT header_fields::text FROM messages WHERE id = $1", mid)
                    for label, mid in ids.items()}
                return batches, fields_now
            finally:
                await conn.close()

        batches, fields = asyncio.run(run())
        assert [b[:2] for b in batches] == [(2, 1), (2, 0), (1, 0), (0, 0)]
        assert fields == {"same": "[]", "break": '[["x", "a\\nb"]]', "colon": '[["x:y", "z"]]',
                          "words": '[["subject", "hi"]]', "empty": "[]"}


def test_version_8_converts_a_populated_database_and_reads_mail_back_exactly(
        postgres: str) -> None:
    """Corpus messages stored the way schema 7 stored them (hex blob ids, a BODY column),
    then migrated: every message reassembles byte for byte from the skeleton id and blob
    ids the store now reads (32-byte ``bytea`` in the database, hex outside), BODY cut out
    of BODYSTRUCTURE equals the BODY schema 7 kept, gc's reference queries find every blob,
    and the new code delivers and expunges in the migrated database."""
    from metadata.bodystructure import render_body
    from metadata.delivery import prepare
    from metadata.flags import DELETED, Flags
    from metadata.mimetree import parse
    from metadata.splitter import reassemble
    from metadata.store import MetadataStore
    from metadata.uidset import UidSet
    from tests.conftest import CORPUS
    from tests.metadata_support import FAST_SCRYPT, sample_row

    # Every 8th corpus file: all five sources, attachments, nesting, 8-bit headers.
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "LICENSES" not in p.parts
                   and p.name not in ("FEATURES.tsv", "MANIFEST.sha256", "README.md")
                   and p.stat().st_size < 256 * 1024)[::8]
    if not files:
        pytest.skip("no corpus")
    raws = [p.read_bytes() for p in files]
    # A low threshold splits attachments and large parts out into blobs of their own.
    prepared = [prepare(raw, 512) for raw in raws]
    assert sum(bool(p.blob_ids) for p in prepared) > 5  # blob references besides skeletons
    blobs: dict[str, bytes] = {}
    for p in prepared:
        blobs.update(p.split.named_blobs)
    when = dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC)

    with fresh_database(postgres, migrate=False) as dsn:
        async def seed() -> tuple[int, int, dict[int, bytes]]:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn, load_migrations()[:7])
                user = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ('old', 'x') RETURNING id")
                await conn.execute("INSERT INTO user_usage (user_id) VALUES ($1)", user)
                box = await conn.fetchval(
                    "INSERT INTO mailboxes (user_id, name, uidvalidity, uidnext) "
                    "VALUES ($1, 'INBOX', 1, $2) RETURNING id", user, len(prepared) + 1)
                bodies = {}
                for uid, (raw, p) in enumerate(zip(raws, prepared, strict=True), 1):
                    row = p.row
                    mid = await conn.fetchval(
                        "INSERT INTO messages (user_id, skeleton_id, size, header_block, "
                        "envelope, bodystructure, body, section_map, search_header, "
                        "search_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', '') "
                        "RETURNING id", user, row.skeleton_id, row.size, row.header_block,
                        row.envelope, row.bodystructure, render_body(parse(raw)),
                        row.section_map)
                    await conn.executemany(
                        "INSERT INTO message_blobs (user_id, message_id, blob_id) "
                        "VALUES ($1, $2, $3)",
                        [(user, mid, b) for b in sorted({row.skeleton_id, *p.blob_ids})])
                    await conn.execute(
                        "INSERT INTO mailbox_messages (user_id, mailbox_id, uid, message_id, "
                        "modseq, internaldate, size) VALUES ($1, $2, $3, $4, 1, $5, $6)",
                        user, box, uid, mid, when, row.size)
                    bodies[uid] = render_body(parse(raw))
                assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 7
                assert [m.version for m in await migrate(conn)] == [8]
                return user, box, bodies
            finally:
                await conn.close()

        user, box, bodies = asyncio.run(seed())

        async def read_back() -> None:
            store = await MetadataStore.open(dsn, pool_min=1, pool_max=2,
                                             password_params=FAST_SCRYPT)
            try:
                entries = await store.messages.fetch(
                    user, box, UidSet.all(),
                    items=["skeleton", "envelope", "bodystructure", "body", "header",
                           "sections"])
                assert [e.uid for e in entries] == list(range(1, len(prepared) + 1))
                for e, raw, p in zip(entries, raws, prepared, strict=True):
                    assert e.skeleton_id == p.row.skeleton_id
                    assert reassemble(blobs[e.skeleton_id], blobs) == raw
                    assert e.body == bodies[e.uid]
                    assert (e.envelope, e.bodystructure, e.header_block, e.section_map) == (
                        p.row.envelope, p.row.bodystructure, p.row.header_block,
                        p.row.section_map)
                    assert await store.messages.blob_ids(user, e.message_id) == sorted(
                        {p.row.skeleton_id, *p.blob_ids})
                assert await store.references.referenced([*blobs, "f" * 64, "NOT-HEX"]) \
                    == set(blobs)
                walked = [b async for batch in store.references.iter_blob_ids(batch=7)
                          for b in batch]
                assert walked == sorted(blobs)
                assert await store.messages.skeleton_counts(user, box) == {
                    p.row.skeleton_id: n for p, n in
                    ((p, sum(q.row.skeleton_id == p.row.skeleton_id for q in prepared))
                     for p in prepared)}
                # The new code writes and deletes in the migrated database.
                row = sample_row("after")
                appended = await store.messages.insert(user, box, row, [], internaldate=when)
                assert await store.references.count(row.skeleton_id) == 1
                await store.messages.store_flags(user, box, UidSet.from_uids([appended.uid]),
                                                 "add", Flags(DELETED))
                await store.messages.expunge(user, box)
                assert await store.references.count(row.skeleton_id) == 0
            finally:
                await store.close()

        asyncio.run(read_back())
        columns = {r["attname"]: r["t"] for r in asyncio.run(fetch(
            dsn, "SELECT attname, atttypid::regtype::text AS t FROM pg_attribute WHERE "
            "attrelid IN ('messages'::regclass, 'message_blobs'::regclass) AND attnum > 0 "
            "AND NOT attisdropped"))}
        assert columns["skeleton_id"] == columns["blob_id"] == "bytea"
        assert not {"body", "created_at", "message_id_header"} & set(columns)
        assert asyncio.run(fetch(dsn, "SELECT to_regclass('messages_message_id_idx') AS i")
                           )[0]["i"] is None
