-- objmail metadata schema, version 8: blob ids as 32 bytes, BODY derived, unread columns gone.
--
-- PostgreSQL is the tier that is hardest to scale (issue 13: bytes per message).  Three
-- columns go smaller or away; nothing a client sees changes.
--
-- 1. Blob ids (SHA-256) were stored as 64 hex characters of text: 65 bytes in the row and
--    in every index entry that carries them (message_blobs: the row, its primary key, its
--    blob_id index; messages.skeleton_id).  They are now the digest's 32 bytes (bytea, 33
--    stored).  The store converts at its boundary (metadata/blobkeys.py): every caller
--    still sees hex.  The bytes sort as their hex spellings do, so gc's cursor over
--    message_blobs (metadata/references.py) walks in the same order.
-- 2. messages.body (BODY, about 120 bytes a message) is dropped: BODY is BODYSTRUCTURE
--    without the extension data (RFC 3501 7.4.2), and every stored pair was rendered by
--    one function from one MIME tree (metadata.bodystructure._render, extended or not), so
--    the store cuts BODY out of bodystructure at FETCH time
--    (metadata.bodystructure.body_from_bodystructure; checked equal to the stored BODY
--    over the whole corpus by the tests).
-- 3. messages.created_at and messages.message_id_header, with its index
--    messages_message_id_idx, are dropped: nothing ever read them (the entry's INTERNALDATE
--    says when a message arrived; THREAD keeps its own thread_message_id, SEARCH HEADER
--    Message-ID reads the header lines).
--
-- Each ALTER TABLE below rewrites its table once (a type change with USING), with its
-- indexes, under an ACCESS EXCLUSIVE lock: a long step on a large database, taken in the
-- migration's one transaction like every migration (a failure leaves version 7 intact).
-- The dropped columns' bytes go in the same rewrite.  The old CHECKs are text patterns
-- and cannot hold for bytea: each is replaced by a length check.

ALTER TABLE message_blobs DROP CONSTRAINT message_blobs_blob_id_check;
ALTER TABLE message_blobs
    ALTER COLUMN blob_id TYPE bytea USING decode(blob_id, 'hex'),
    ADD CONSTRAINT message_blobs_blob_id_check CHECK (octet_length(blob_id) = 32);

DROP INDEX messages_message_id_idx;
ALTER TABLE messages DROP CONSTRAINT messages_skeleton_id_check;
ALTER TABLE messages
    DROP COLUMN body,
    DROP COLUMN created_at,
    DROP COLUMN message_id_header,
    ALTER COLUMN skeleton_id TYPE bytea USING decode(skeleton_id, 'hex'),
    ADD CONSTRAINT messages_skeleton_id_check CHECK (octet_length(skeleton_id) = 32);

COMMENT ON TABLE messages IS
    'One row per stored message of a user (COPY shares it): skeleton blob, RFC822.SIZE, pre-rendered ENVELOPE/BODYSTRUCTURE (BODY is derived from BODYSTRUCTURE), the raw top-level header block, the splitter''s section map, and casefolded search data.';
COMMENT ON COLUMN messages.skeleton_id IS
    'SHA-256 (32 bytes) of the skeleton blob, or of the whole message when it was not split; hex outside the database.';
COMMENT ON COLUMN message_blobs.blob_id IS
    'SHA-256 (32 bytes) of a referenced blob; hex outside the database.';
