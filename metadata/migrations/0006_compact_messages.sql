-- objmail metadata schema, version 6: compress the messages row.
--
-- A message's pre-rendered IMAP data (header block, ENVELOPE, BODYSTRUCTURE, BODY, section
-- map) and its casefolded search text are compressed only when the whole row passes 2 KB
-- (TOAST_TUPLE_THRESHOLD, compiled into the server), and then only until it is back under
-- 2 KB: most often by moving search_body out alone, leaving the rest plain.  Now
-- (docs/metadata.md, "Storage"):
--
-- * a row over 2 KB is compressed down towards 128 bytes (toast_tuple_target), value by
--   value, largest first; a row under 2 KB is still stored as is (PostgreSQL starts no
--   compression below the compiled threshold, whatever the target says);
-- * with lz4 where the server has it (PostgreSQL 14+ built --with-lz4): several times
--   faster to decompress than pglz, which FETCH ENVELOPE / BODY[HEADER...] pay per row;
-- * what FETCH reads, and the header text SEARCH TEXT rechecks row by row, stays in the
--   row (STORAGE MAIN: compressed in place, moved out only when the row passes a page);
--   what only SEARCH BODY/TEXT and SEARCH HEADER read (search_body, header_fields) may
--   move to the TOAST table, which keeps the rows FETCH walks small.
--
-- All of it is table settings: nothing is rewritten, the ALTERs hold their lock for an
-- instant, and running this twice changes nothing.  Rows stored before keep their format
-- (same values) until rewritten: `objmail db compact` does it online in small batches
-- (metadata/compact.py), and drops the header_fields list a new row no longer keeps.
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
