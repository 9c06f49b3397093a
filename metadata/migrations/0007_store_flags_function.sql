-- objmail metadata schema, version 7: STORE in one round trip.
--
-- A STORE took five round trips (BEGIN, lock the mailbox row, update the entries, raise
-- HIGHESTMODSEQ and queue the notification, COMMIT), each costing imapd and PostgreSQL
-- their per-statement work; a STORE is 15-20% of an IMAP client's commands.  The same
-- steps now run inside one function called as one statement (autocommit: it is its own
-- transaction).  Each statement of a VOLATILE PL/pgSQL function takes a new snapshot
-- under READ COMMITTED, exactly like the statements of the transaction it replaces: the
-- entries are read and written *after* the mailbox row is locked, so a STORE that
-- committed while this one waited for the lock is seen, never overwritten.
--
-- Arguments: the user, the mailbox, the UID ranges (lows, highs), the mode ('add',
-- 'remove', 'replace'), the flag bits and keywords, UNCHANGEDSINCE (NULL: none) and the
-- user's NOTIFY channel.  Returns each entry in the ranges, by UID: its flags, keywords and
-- mod-sequence after the STORE and whether the STORE changed it.  Raises P0002 when the
-- mailbox does not exist or is \Noselect.
CREATE FUNCTION objmail_store_flags(
    p_user bigint, p_mailbox bigint, p_lows bigint[], p_highs bigint[], p_mode text,
    p_flags integer, p_keywords text[], p_unchanged bigint, p_channel text)
RETURNS TABLE (o_uid bigint, o_flags integer, o_keywords text[], o_modseq bigint,
               o_changed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_modseq bigint;
BEGIN
    IF p_mode NOT IN ('add', 'remove', 'replace') THEN
        RAISE EXCEPTION 'unknown store mode %', p_mode USING ERRCODE = '22023';
    END IF;
    SELECT mb.highestmodseq + 1 INTO v_modseq FROM mailboxes mb
     WHERE mb.user_id = p_user AND mb.id = p_mailbox AND NOT mb.noselect
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no selectable mailbox with id %', p_mailbox USING ERRCODE = 'P0002';
    END IF;
    -- The outer SELECT sees the entries as they were before the UPDATE, which for the
    -- unchanged ones is as they are (the mailbox lock keeps other STOREs out).
    RETURN QUERY
    WITH changed AS (
        UPDATE mailbox_messages mm
           SET flags = CASE p_mode WHEN 'add' THEN mm.flags | p_flags
                                   WHEN 'remove' THEN mm.flags & ~p_flags
                                   ELSE p_flags END,
               keywords = CASE p_mode
                   WHEN 'add' THEN mm.keywords || ARRAY(
                       SELECT k FROM unnest(p_keywords) WITH ORDINALITY AS t(k, n)
                        WHERE k <> ALL (mm.keywords) ORDER BY n)
                   WHEN 'remove' THEN ARRAY(
                       SELECT k FROM unnest(mm.keywords) WITH ORDINALITY AS t(k, n)
                        WHERE k <> ALL (p_keywords) ORDER BY n)
                   ELSE p_keywords END,
               modseq = v_modseq
          FROM unnest(p_lows, p_highs) AS r(lo, hi)
         WHERE mm.user_id = p_user AND mm.mailbox_id = p_mailbox
           AND mm.uid BETWEEN r.lo AND r.hi
           AND CASE p_mode
                   WHEN 'add' THEN (mm.flags | p_flags <> mm.flags
                                    OR NOT mm.keywords @> p_keywords)
                   WHEN 'remove' THEN (mm.flags & p_flags <> 0 OR mm.keywords && p_keywords)
                   ELSE (mm.flags <> p_flags OR NOT (mm.keywords @> p_keywords
                                                     AND mm.keywords <@ p_keywords)) END
           AND (p_unchanged IS NULL OR mm.modseq <= p_unchanged)
        RETURNING mm.uid, mm.flags, mm.keywords, mm.modseq)
    SELECT c.uid, c.flags, c.keywords, c.modseq, true FROM changed c
    UNION ALL
    SELECT mm.uid, mm.flags, mm.keywords, mm.modseq, false
      FROM unnest(p_lows, p_highs) AS r(lo, hi)
      JOIN mailbox_messages mm ON mm.user_id = p_user AND mm.mailbox_id = p_mailbox
                              AND mm.uid BETWEEN r.lo AND r.hi
     WHERE mm.uid NOT IN (SELECT c.uid FROM changed c)
    ORDER BY 1;
    -- Something changed: raise HIGHESTMODSEQ, add the keywords to the mailbox's list (it
    -- only grows) and queue the notification, delivered at commit.
    IF EXISTS (SELECT 1 FROM mailbox_messages mm WHERE mm.user_id = p_user
                  AND mm.mailbox_id = p_mailbox AND mm.modseq = v_modseq) THEN
        UPDATE mailboxes mb SET highestmodseq = v_modseq,
               keywords = CASE WHEN p_mode = 'remove' THEN mb.keywords
                   ELSE mb.keywords || ARRAY(
                       SELECT k FROM unnest(p_keywords) WITH ORDINALITY AS t(k, n)
                        WHERE k <> ALL (mb.keywords) ORDER BY n) END
         WHERE mb.user_id = p_user AND mb.id = p_mailbox;
        PERFORM pg_notify(p_channel, format('{"k":"flags","m":%s,"s":%s}', p_mailbox,
                                            v_modseq));
    END IF;
END
$$;
COMMENT ON FUNCTION objmail_store_flags(bigint, bigint, bigint[], bigint[], text, integer,
                                        text[], bigint, text) IS
    'STORE FLAGS/+FLAGS/-FLAGS in one round trip: lock the mailbox, update the entries, raise HIGHESTMODSEQ, notify.';
