-- objmail metadata schema, version 6: compress the messages row.
--
-- A message's pre-rendered IMAP data (header block, ENVELOPE, BODYSTRUCTURE, BODY, section
-- map) and its casefolded search text were stored as given unless the whole row passed
-- 2 KB; most rows stayed below that, so most of it was kept uncompressed, and what did
-- pass went to the TOAST table with pglz.  Now (docs/metadata.md, "Storage"):
--
-- * every row is compressed from 128 bytes on (toast_tuple_target), so each large value
--   is compressed whatever the row's size;
-- * with lz4 where the server has it (PostgreSQL 14+ built --with-lz4): a few times
--   faster to decompress than pglz, which FETCH ENVELOPE / BODY[HEADER...] pay per row;
-- * what FETCH reads, and the header text SEARCH TEXT rechecks row by row, stays in the
--   row (STORAGE MAIN: compressed in place, moved out only when the row passes a page);
--   what only SEARCH BODY/TEXT and SEARCH HEADER read (search_body, header_fields) may
--   move to the TOAST table, which keeps the rows FETCH walks small.
--
-- All of it is metadata: nothing is rewritten, the ALTERs take their lock for an instant,
-- and running this twice changes nothing.  Rows stored before keep their old format
-- (still readable, same values) until they are next written or the table is rewritten
-- (pg_repack, or VACUUM FULL in a maintenance window): rewriting 60k rows online is what
-- an operator chooses, not a migration's side effect.
DO $$
BEGIN
    ALTER TABLE messages
        ALTER COLUMN header_block SET COMPRESSION lz4,
        ALTER COLUMN envelope SET COMPRESSION lz4,
        ALTER COLUMN bodystructure SET COMPRESSION lz4,
        ALTER COLUMN body SET COMPRESSION lz4,
        ALTER COLUMN section_map SET COMPRESSION lz4,
        ALTER COLUMN header_fields SET COMPRESSION lz4,
        ALTER COLUMN search_header SET COMPRESSION lz4,
        ALTER COLUMN search_body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    -- A server without lz4 keeps pglz: the rest of this migration still applies.
    RAISE NOTICE 'lz4 compression unavailable, messages keep pglz';
END
$$;

ALTER TABLE messages
    ALTER COLUMN header_block SET STORAGE MAIN,
    ALTER COLUMN envelope SET STORAGE MAIN,
    ALTER COLUMN bodystructure SET STORAGE MAIN,
    ALTER COLUMN body SET STORAGE MAIN,
    ALTER COLUMN section_map SET STORAGE MAIN,
    ALTER COLUMN search_header SET STORAGE MAIN,
    ALTER COLUMN header_fields SET STORAGE EXTENDED,
    ALTER COLUMN search_body SET STORAGE EXTENDED;
ALTER TABLE messages SET (toast_tuple_target = 128);
