"""The PostgreSQL connection pool, and the one place driver errors become store errors.

The pool is an ``asyncpg`` pool, so it belongs to the event loop that creates it: create it
with :meth:`Database.open` once the loop runs (under Twisted, once the asyncio reactor is
installed and running) and close it on that same loop.  Every multi-row change runs in
:meth:`Database.transaction`; reads that need one consistent view too.

A second, smaller pool serves the statements that may scan a mailbox (substring SEARCH, and
SORT/THREAD with substring criteria): its connections are planned for their parameters at
every run and carry ``search_timeout``, both set when they open, so such a statement is one
round trip, not a transaction with ``SET LOCAL`` in it (:meth:`Database.search_connection`).

Driver exceptions that mean "PostgreSQL is not there" (refused connection, server shutdown,
connection lost mid-query, pool acquire timeout, refused credentials) leave as :class:`~metadata.errors.Unavailable`
and "the schema is missing" as :class:`~metadata.errors.SchemaError`, a statement PostgreSQL
cancelled (``statement_timeout``) as :class:`~metadata.errors.QueryTooLong`; callers map only
these to their protocol.  Everything else (constraint violations the store did not expect,
syntax errors) stays a driver exception: a bug.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from urllib.parse import parse_qs, urlsplit

import asyncpg

from metadata.errors import QueryTooLong, SchemaError, Unavailable
from runtime.errors import reason

__all__ = ["SEARCH_SETTINGS", "SERVER_SETTINGS", "UNAVAILABLE", "Database", "search_pool_size",
           "timeout_setting", "translate_errors", "unreachable", "where"]

#: Driver errors that mean the server is unreachable or went away.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


#: Set on every pooled connection when it opens.  The queries are short OLTP ones over one
#: user's rows; a trigram SEARCH over a large mailbox can pass the planner's JIT cost
#: threshold, and compiling it takes longer than running it.
SERVER_SETTINGS = {"jit": "off"}

#: Set, besides :data:`SERVER_SETTINGS`, on the search pool's connections.  Whether the
#: trigram index pays depends on the string and the mailbox size; a generic plan, which a
#: prepared statement (asyncpg names and caches every statement) switches to after five
#: runs when it looks no dearer, knows neither, and would walk every entry of a
#: 100,000-message mailbox.  On every connection it would re-plan the short OLTP
#: statements at each run for nothing.
SEARCH_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


def search_pool_size(max_size: int) -> int:
    """Connections of the search pool for a main pool of ``max_size``: half.  A substring
    SEARCH is a few percent of the commands but the longest statement; its own pool keeps a
    burst of them from taking every connection the other commands need."""
    return max(1, max_size // 2)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise driver errors as :class:`Unavailable` / :class:`SchemaError` (see module doc)."""
    try:
        yield
    except (asyncpg.exceptions.UndefinedTableError,
            asyncpg.exceptions.UndefinedColumnError,
            asyncpg.exceptions.UndefinedFunctionError) as exc:
        raise SchemaError(f"database schema missing or outdated ({exc}); "
                          "run `objmail db migrate`") from exc
    except asyncpg.exceptions.QueryCanceledError as exc:
        # statement_timeout (or an operator's pg_cancel_backend): the command fails, the
        # session and the pooled connection carry on.  (A subclass of
        # OperatorInterventionError, which otherwise means the server is going away.)
        raise QueryTooLong(f"the query took too long and was cancelled ({exc})") from exc
    except UNAVAILABLE as exc:
        raise Unavailable(f"PostgreSQL unavailable: {exc or type(exc).__name__}") from exc
    except asyncpg.exceptions.InvalidAuthorizationSpecificationError as exc:
        # A wrong password or user, or pg_hba.conf refusing us: unusable until an operator
        # fixes the credentials (a daemon exits 69 at start-up, a command says NO/451).
        raise Unavailable(f"PostgreSQL refused the credentials: {exc}") from exc


def timeout_setting(seconds: float | None) -> str:
    """``statement_timeout`` in milliseconds for ``seconds`` (None or 0: no limit)."""
    return str(round(seconds * 1000)) if seconds else "0"


def unreachable(dsn: str, exc: BaseException) -> Unavailable:
    """The error for a connection to ``dsn`` that could not be made: one line naming the
    server and the cause (``PostgreSQL unreachable at db1:5432/objmail: Connection
    refused``)."""
    return Unavailable(f"PostgreSQL unreachable at {where(dsn)}: {reason(exc)}")


def where(dsn: str) -> str:
    """``host:port/database`` of a DSN, for messages: never its user or password."""
    if "://" not in dsn:
        return "the configured server (cluster.pg_dsn)"
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2] or parse_qs(parts.query).get(
        "host", ["localhost"])[0]
    return host + (parts.path if parts.path not in ("", "/") else "")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool runs on a connection given back, after its own rollback of an open
    transaction: nothing.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release, a round trip as costly as the query the connection was
    taken for (most IMAP commands take one or two).  Pooled connections never carry session
    state to clean: LISTEN has its own connection (:mod:`metadata.notify`), the migration
    lock its own (:mod:`metadata.migrate`), and nothing here runs ``SET`` or cursors
    ``WITH HOLD``.
    """


def _lost(conn: asyncpg.Connection, exc: BaseException) -> bool:
    """Whether ``exc`` comes from ``conn`` having gone away."""
    cause: BaseException | None = exc.__context__
    while cause is not None:
        if isinstance(cause, UNAVAILABLE):
            return True
        cause = cause.__context__
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # already released by the pool: it saw the loss
        return True


class Database:
    """A pool of connections to the metadata database."""

    def __init__(self, pool: asyncpg.Pool, search_pool: asyncpg.Pool, dsn: str,
                 acquire_timeout: float = 10.0) -> None:
        self.pool = pool
        #: Connections for statements that may scan a mailbox (see the module doc).
        self.search_pool = search_pool
        self.dsn = dsn
        self.acquire_timeout = acquire_timeout

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 2, max_size: int = 10,
                   acquire_timeout: float = 10.0, command_timeout: float | None = 60.0,
                   connect_timeout: float = 10.0, password: str | None = None,
                   statement_timeout: float | None = None,
                   search_timeout: float | None = None) -> Database:
        """Connect the pool (``min_size`` connections at once).

        :param password: the DSN user's password (``cluster.pg_password_file``, read by
            ``main()``), kept out of the DSN so it never shows in a config or a log.

        :param acquire_timeout: seconds to wait for a free connection before
            :class:`Unavailable`.
        :param connect_timeout: seconds one new connection may take (TCP, SCRAM, settings);
            apart from ``acquire_timeout``, since a loaded PostgreSQL can take longer to let
            a backend in than a caller should wait for a busy pool.
        :param command_timeout: seconds the client waits for a statement before it gives
            up on the connection.
        :param statement_timeout: seconds PostgreSQL lets a statement run before it cancels
            it (:class:`QueryTooLong`); None: no limit.  One user's runaway query must not
            pin a backend for minutes.
        :param search_timeout: the same for the statements of the search pool, which may
            scan a mailbox; None: ``statement_timeout``.
        :raises Unavailable: PostgreSQL cannot be reached.
        """
        def create(min_size: int, max_size: int, timeout: float | None,
                   extra: dict[str, str]) -> Awaitable[asyncpg.Pool]:
            return asyncpg.create_pool(dsn, password=password, min_size=min_size,
                                       max_size=max_size, command_timeout=command_timeout,
                                       timeout=connect_timeout, reset=_keep_session,
                                       server_settings={**SERVER_SETTINGS, **extra,
                                                        "statement_timeout":
                                                            timeout_setting(timeout)})

        with translate_errors():  # refused credentials
            try:
                pool = await create(min_size, max_size, statement_timeout, {})
            except UNAVAILABLE as exc:
                raise unreachable(dsn, exc) from exc
        try:
            # Connected on first use (min_size 0): most processes never search.
            search_pool = await create(
                0, search_pool_size(max_size),
                statement_timeout if search_timeout is None else search_timeout,
                SEARCH_SETTINGS)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, search_pool, dsn, acquire_timeout)

    async def close(self) -> None:
        """Close every connection (waits for those in use to be released)."""
        await self.search_pool.close()
        await self.pool.close()

    def _acquire_timeout(self, pool: asyncpg.Pool) -> float | None:
        """No timeout when a connection sits idle in the pool: it is handed over without
        waiting, and arming a timer for it costs as much as the pool's own work."""
        return None if pool.get_idle_size() else self.acquire_timeout

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection outside any transaction (each statement commits alone)."""
        with translate_errors():
            async with self.pool.acquire(timeout=self._acquire_timeout(self.pool)) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def search_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the search pool, outside any transaction: its statements are
        planned for their parameters at every run and may take ``search_timeout``.  For
        one statement that reads (a single statement is atomic alone), never for writes."""
        pool = self.search_pool
        with translate_errors():
            async with pool.acquire(timeout=self._acquire_timeout(pool)) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, *, readonly: bool = False,
                          isolation: str = "read_committed") -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction, committed when the block ends
        normally and rolled back when it raises."""
        with translate_errors():
            async with self.pool.acquire(timeout=self._acquire_timeout(self.pool)) as conn:
                try:
                    async with conn.transaction(readonly=readonly, isolation=isolation):
                        yield conn
                except asyncpg.InterfaceError as exc:
                    # Ending a transaction on a connection that died raises this, hiding
                    # the error that killed it.
                    if _lost(conn, exc):
                        raise Unavailable(f"PostgreSQL connection lost: {exc}") from exc
                    raise
