-- objmail metadata schema, version 5: a message-count quota and the bytes of \Deleted.
--
-- IMAP QUOTA (RFC 9208) reports two resources per user: STORAGE (user_usage.used_bytes
-- against quota_bytes) and MESSAGE (user_usage.message_count against the new
-- quota_messages; 0 means unlimited, as for quota_bytes).  Both counters are already kept
-- in the transaction of every delivery, APPEND, COPY and EXPUNGE (metadata.messages.charge).
--
-- A server announcing QUOTA=RES-STORAGE must answer STATUS DELETED-STORAGE: what an
-- EXPUNGE of the mailbox would give back.  The mailbox row keeps it next to n_deleted, by
-- the same statement-level trigger of migration 4, so STATUS stays one row read.
ALTER TABLE user_usage
    ADD COLUMN quota_messages bigint NOT NULL DEFAULT 0 CHECK (quota_messages >= 0);
COMMENT ON COLUMN user_usage.quota_messages IS
    'Most mailbox entries the user may have (0 = unlimited); message_count is the usage.';

ALTER TABLE mailboxes
    ADD COLUMN deleted_size bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN mailboxes.deleted_size IS
    'Sum of RFC822.SIZE of the entries with \Deleted (kept by objmail_count_entries).';

CREATE OR REPLACE FUNCTION objmail_count_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Each entry counts +1 in the rows it has after the statement and -1 in those it had.
    -- A transition table exists only for the events that have it: one branch per event.
    IF TG_OP = 'INSERT' THEN
        UPDATE mailboxes mb SET n_messages = mb.n_messages + d.messages,
                                n_unseen = mb.n_unseen + d.unseen,
                                n_deleted = mb.n_deleted + d.deleted,
                                total_size = mb.total_size + d.size,
                                deleted_size = mb.deleted_size + d.deleted_size
        FROM (SELECT user_id, mailbox_id, count(*) AS messages,
                     count(*) FILTER (WHERE flags & 1 = 0) AS unseen,
                     count(*) FILTER (WHERE flags & 8 <> 0) AS deleted, sum(size) AS size,
                     coalesce(sum(size) FILTER (WHERE flags & 8 <> 0), 0) AS deleted_size
              FROM new_entries GROUP BY user_id, mailbox_id) AS d
        WHERE mb.user_id = d.user_id AND mb.id = d.mailbox_id;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE mailboxes mb SET n_messages = mb.n_messages - d.messages,
                                n_unseen = mb.n_unseen - d.unseen,
                                n_deleted = mb.n_deleted - d.deleted,
                                total_size = mb.total_size - d.size,
                                deleted_size = mb.deleted_size - d.deleted_size
        FROM (SELECT user_id, mailbox_id, count(*) AS messages,
                     count(*) FILTER (WHERE flags & 1 = 0) AS unseen,
                     count(*) FILTER (WHERE flags & 8 <> 0) AS deleted, sum(size) AS size,
                     coalesce(sum(size) FILTER (WHERE flags & 8 <> 0), 0) AS deleted_size
              FROM old_entries GROUP BY user_id, mailbox_id) AS d
        WHERE mb.user_id = d.user_id AND mb.id = d.mailbox_id;
    ELSE
        UPDATE mailboxes mb SET n_messages = mb.n_messages + d.messages,
                                n_unseen = mb.n_unseen + d.unseen,
                                n_deleted = mb.n_deleted + d.deleted,
                                total_size = mb.total_size + d.size,
                                deleted_size = mb.deleted_size + d.deleted_size
        FROM (SELECT user_id, mailbox_id, sum(sign) AS messages,
                     coalesce(sum(sign) FILTER (WHERE flags & 1 = 0), 0) AS unseen,
                     coalesce(sum(sign) FILTER (WHERE flags & 8 <> 0), 0) AS deleted,
                     sum(sign * size) AS size,
                     coalesce(sum(sign * size) FILTER (WHERE flags & 8 <> 0), 0)
                         AS deleted_size
              FROM (SELECT user_id, mailbox_id, flags, size, 1 AS sign FROM new_entries
                    UNION ALL
                    SELECT user_id, mailbox_id, flags, size, -1 AS sign FROM old_entries
                   ) AS changed
              GROUP BY user_id, mailbox_id) AS d
        WHERE mb.user_id = d.user_id AND mb.id = d.mailbox_id
          -- A STORE that moved no count (\Flagged, keywords) writes no mailbox row.
          AND (d.messages <> 0 OR d.unseen <> 0 OR d.deleted <> 0 OR d.size <> 0
               OR d.deleted_size <> 0);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION objmail_count_entries() IS
    'Keeps mailboxes.n_messages, n_unseen, n_deleted, total_size and deleted_size equal to the counts of mailbox_messages.';

-- Backfill: the bytes flagged \Deleted now.
UPDATE mailboxes mb SET deleted_size = c.size
FROM (SELECT user_id, mailbox_id, sum(size) AS size FROM mailbox_messages
      WHERE flags & 8 <> 0 GROUP BY user_id, mailbox_id) AS c
WHERE mb.user_id = c.user_id AND mb.id = c.mailbox_id;
