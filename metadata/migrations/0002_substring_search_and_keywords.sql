-- objmail metadata schema, version 2: substring SEARCH BODY/TEXT, and each mailbox's keywords.
--
-- SEARCH BODY and TEXT are substring tests (RFC 3501 6.4.4: "contain the specified
-- string"), which a word index cannot answer ("sdfghjk" is inside "asdfghjkl").  The
-- casefolded header and body text is now kept as text and indexed by trigrams (pg_trgm,
-- shipped with PostgreSQL's contrib modules), which serves ILIKE '%...%' for strings of
-- three characters or more; the word vector goes.  Rows stored before this version cannot
-- get their text back (only the vector held it): they get the words of the vector instead,
-- headers and body apart by weight, so a word or a piece of one is still found in them.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE messages
    ADD COLUMN search_header text NOT NULL DEFAULT '',
    ADD COLUMN search_body text NOT NULL DEFAULT '';
UPDATE messages SET
    search_header = array_to_string(tsvector_to_array(ts_filter(search_vector, '{a}')), ' '),
    search_body = array_to_string(tsvector_to_array(ts_filter(search_vector, '{d}')), ' ');
DROP INDEX messages_search_idx;
ALTER TABLE messages DROP COLUMN search_vector;
DROP FUNCTION objmail_search_query(text, text);
COMMENT ON COLUMN messages.search_header IS
    'Casefolded decoded "name: value" lines of the top-level header (SEARCH TEXT).';
COMMENT ON COLUMN messages.search_body IS
    'Casefolded decoded text of the text parts (SEARCH BODY and TEXT).';
-- GIN over (user_id, trigrams) through btree_gin, like every per-user index.  PostgreSQL
-- takes it for a large mailbox and walks a small one's rows instead, which is cheaper.
CREATE INDEX messages_search_header_trgm_idx ON messages
    USING gin (user_id, search_header gin_trgm_ops);
CREATE INDEX messages_search_body_trgm_idx ON messages
    USING gin (user_id, search_body gin_trgm_ops);

-- Every keyword used in the mailbox, in first-use order, for FLAGS and PERMANENTFLAGS at
-- SELECT and for telling other sessions about a new one (RFC 3501 7.2.6).  It only
-- grows: a keyword is never dropped from FLAGS while a message may still carry it.
ALTER TABLE mailboxes ADD COLUMN keywords text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN mailboxes.keywords IS
    'Keywords ever set on an entry of the mailbox (grows only; reset when the mailbox is recreated).';
UPDATE mailboxes mb SET keywords = used.keywords
FROM (SELECT mm.user_id, mm.mailbox_id, array_agg(DISTINCT k ORDER BY k) AS keywords
      FROM mailbox_messages mm, unnest(mm.keywords) AS k
      GROUP BY mm.user_id, mm.mailbox_id) AS used
WHERE mb.user_id = used.user_id AND mb.id = used.mailbox_id;
