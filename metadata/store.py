"""The metadata store as the rest of objmail uses it: one object over one pool.

Build it once the event loop runs (``await MetadataStore.open(dsn)``), pass it to the
delivery code and the IMAP/POP3/LMTP handlers, close it on shutdown.  The operations are
grouped by concept: ``store.users``, ``store.mailboxes``, ``store.messages``,
``store.references`` (gc).  Change notifications arrive through a separate
:class:`~metadata.notify.ChangeListener`, which needs its own connection.
"""

from __future__ import annotations

from metadata import migrate
from metadata.db import Database
from metadata.mailboxes import Mailboxes
from metadata.messages import Messages
from metadata.passwords import DEFAULT_PARAMS, ScryptParams, VerifiedLogins
from metadata.references import References
from metadata.users import Users

__all__ = ["MetadataStore"]


class MetadataStore:
    """Users, mailboxes, messages and references over one :class:`Database`."""

    def __init__(self, db: Database, *, password_params: ScryptParams = DEFAULT_PARAMS,
                 verified: VerifiedLogins | None = None) -> None:
        self.db = db
        self.users = Users(db, password_params=password_params, verified=verified)
        self.mailboxes = Mailboxes(db)
        self.messages = Messages(db)
        self.references = References(db)

    @classmethod
    async def open(cls, dsn: str, *, pool_min: int = 2, pool_max: int = 10,
                   check_schema: bool = True,
                   password_params: ScryptParams = DEFAULT_PARAMS,
                   verified: VerifiedLogins | None = None,
                   password: str | None = None, statement_timeout: float | None = None,
                   search_timeout: float | None = None) -> MetadataStore:
        """Connect a pool and, unless told not to, refuse a schema that is not this
        release's.

        :param verified: the process's cache of recently verified logins (default: one
            with a 300 s TTL).
        :param password: PostgreSQL password of the DSN's user (read by ``main()`` from
            ``cluster.pg_password_file``).
        :param statement_timeout: seconds PostgreSQL lets a statement run (None: no limit).
        :param search_timeout: the same for substring SEARCH.

        :raises Unavailable: PostgreSQL cannot be reached.
        :raises SchemaError: migrations are pending, modified or unknown.
        """
        db = await Database.open(dsn, min_size=pool_min, max_size=pool_max, password=password,
                                 statement_timeout=statement_timeout,
                                 search_timeout=search_timeout)
        try:
            if check_schema:
                async with db.connection() as conn:
                    await migrate.check_schema(conn)
        except BaseException:
            await db.close()
            raise
        return cls(db, password_params=password_params, verified=verified)

    async def close(self) -> None:
        await self.db.close()
