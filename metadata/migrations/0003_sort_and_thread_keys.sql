-- objmail metadata schema, version 3: SORT (RFC 5256, RFC 5957 DISPLAY) and THREAD keys.
--
-- SORT and THREAD order a whole mailbox; reading 10,000 messages for that is out of the
-- question, so delivery renders each message's keys once (metadata/sortkeys.py): the base
-- subject (RFC 5256 2.1) and whether it was a reply, the first From/To/Cc address's
-- mailbox and display name, the Message-ID and the parents' ids (References, else
-- In-Reply-To).  The sent date is sent_at already; ARRIVAL and SIZE are on the entry.
-- All text keys are casefolded (the i;unicode-casemap comparison).
--
-- Rows stored before this version keep NULL keys: decoding RFC 2047 words and addresses
-- is not something to do in SQL.  The store computes them from the stored header block
-- (header_block, never a blob) the first time SORT or THREAD meets such a row, and writes
-- them back, so the NULLs go away with use.
ALTER TABLE messages
    ADD COLUMN sort_subject text,
    ADD COLUMN sort_reply boolean,
    ADD COLUMN sort_from text,
    ADD COLUMN sort_to text,
    ADD COLUMN sort_cc text,
    ADD COLUMN display_from text,
    ADD COLUMN display_to text,
    ADD COLUMN thread_message_id text,
    ADD COLUMN thread_references text[];
COMMENT ON COLUMN messages.sort_subject IS
    'Base subject (RFC 5256 2.1), casefolded; NULL for rows older than schema 3 (computed on first SORT/THREAD).';
COMMENT ON COLUMN messages.sort_reply IS
    'The Subject carried a reply/forward marker (Re:, Fwd:, (fwd), [fwd: ...]).';
COMMENT ON COLUMN messages.sort_from IS 'addr-mailbox of the first From address, casefolded (also sort_to, sort_cc).';
COMMENT ON COLUMN messages.display_from IS
    'Display name of the first From address, or its mailbox@host, casefolded (RFC 5957; also display_to).';
COMMENT ON COLUMN messages.thread_message_id IS 'Message-ID without angle brackets ('''' when none).';
COMMENT ON COLUMN messages.thread_references IS
    'Parent message ids, oldest first: References, else the first id of In-Reply-To.';
