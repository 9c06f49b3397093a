"""The director's exceptions: one shallow hierarchy under :class:`DirectorError`.

Each class is also one of the kinds in :mod:`runtime.errors` (corruption, unavailable,
limit, invalid input, misconfigured); the protocols' error maps (memcached for directord,
IMAP/POP3/LMTP in imapd, exit codes in ops) choose the words for a kind once.  The
object-server client's :class:`~director.memcache_client.NodeError` and the codec's
:class:`~director.codec.CodecError` belong here too.
"""

from __future__ import annotations

from runtime import errors as kinds


class DirectorError(Exception):
    """Base of every error the director package raises on purpose."""


class IndexUnavailable(DirectorError, kinds.Unavailable):
    """Redis Cluster cannot serve the index: unreachable, still failing when the retry
    deadline passed (outage, failover too long), or refusing commands (out of memory)."""


class WriteUnconfirmed(IndexUnavailable):
    """A Redis write was not acknowledged by ``director.index_write_replicas`` replicas
    within ``director.index_write_timeout``: it would not survive a master failover, so
    it does not count (a temporary failure)."""


class IndexLayoutMismatch(DirectorError, kinds.Misconfigured):
    """The index in Redis was created with another bucket count than the config says."""


class ItemsNotMigrated(DirectorError, kinds.Misconfigured):
    """The index was written before directord's items had a key space of their own, and
    ``objmail index migrate-items`` has not moved them yet: gc would collect them."""


class BadKeyFile(DirectorError, kinds.Misconfigured):
    """The encryption key file (``director.encryption_key_file``) holds no usable key."""


class RegistryError(DirectorError, kinds.InvalidInput):
    """A node registry operation was refused; the message says why."""


class RegistryDamaged(DirectorError, kinds.Corruption):
    """A node's record in the registry cannot be read (edited by hand, or damaged)."""


class UnknownNode(RegistryError):
    """No node with this id (or number) is registered."""


class RemoveRefused(RegistryError):
    """``node remove`` would lose data: the node holds the only copy of some blobs.

    :param sole_copies: how many blobs have this node as their only location.
    :param examples: a few of those blob ids.
    """

    def __init__(self, node_id: str, sole_copies: int, examples: tuple[str, ...]) -> None:
        self.node_id = node_id
        self.sole_copies = sole_copies
        self.examples = examples
        super().__init__(
            f"node {node_id} holds the only copy of {sole_copies} blob(s) "
            f"(e.g. {', '.join(examples)}); drain it (objmail node drain {node_id}) and "
            f"remove it once the directors have copied them elsewhere")


class BlobError(DirectorError):
    """A blob could not be stored or read."""


class BlobUnavailable(BlobError, kinds.Unavailable):
    """No replica could serve the blob, or too few object servers took a write."""


class BlobNotFound(BlobError, kinds.Corruption):
    """The index knows no such blob (never stored, or collected): whoever refers to it
    refers to data the store does not hold."""


class BlobCorrupt(BlobError, kinds.Corruption):
    """Every replica that answered returned bytes that do not hash to the blob's id."""


class KeyUnavailable(DirectorError, kinds.Misconfigured):
    """A stored value is encrypted under a key this process does not hold: a
    configuration problem (a keyring that lacks the key, or none), never corruption.

    Readers do not count such a copy bad or queue it for repair; scrub, repair and the
    ``objmail`` jobs stop with a configuration error (exit 78), imapd answers
    ``NO [CONTACTADMIN] Server misconfigured`` (a kind: misconfigured).

    :param key_id: the key id the value names (0: the legacy ``encryption_key_file``).
    """

    def __init__(self, key_id: int, why: str) -> None:
        self.key_id = key_id
        super().__init__(f"cannot decrypt: value encrypted under key id {key_id}, and {why} "
                         "(every frontend's keyring must hold each key id `objmail keys "
                         "status` lists; docs/security.md, Keys)")


class LeaseHeld(DirectorError, kinds.Unavailable):
    """Another director holds the lease of a background job: it runs the job now.

    :param job: the job (``repair``, ``level``, ``drain:<node id>``).
    :param holder: the holder's token (``host:pid:random``), None if it just ended.
    """

    def __init__(self, job: str, holder: str | None) -> None:
        self.job = job
        self.holder = holder
        super().__init__(f"job {job} is being run by another director "
                         f"({holder or 'just finished'})")


class LeaseLost(DirectorError, kinds.Unavailable):
    """This director's lease on a job ran out (another may have taken over): stop."""
