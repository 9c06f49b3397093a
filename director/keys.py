"""Every Redis key the director uses, and how blob ids and node lists are encoded.

This is the one place that knows key names and byte layouts; ``docs/redis-schema.md``
("Director index and registry") describes the same things for operators.  Nothing
here talks to Redis.

Theory of the index encoding: at a billion blobs the index must cost tens of bytes
per blob, so blob ids are grouped into *buckets*, each one Redis hash small enough
to stay listpack-encoded (a flat byte array: no per-entry pointers or allocations).
A bucket is named by the leading ``bits`` bits of the id; inside it the field is the
id's remaining bytes in binary (32 bytes minus the whole bytes the bucket name
already says) and the value is the sorted, comma-separated small node numbers
(``b"3,7"``), which listpack stores in a handful of bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from director.errors import DirectorError
from runtime import errors as kinds
from runtime.nodekeys import DEFAULT_PREFIX, REGISTRY_TAG, hot_key, registry_key, report_key

#: Prefix of every key objmail writes (``cluster.redis_prefix`` by default).
PREFIX = DEFAULT_PREFIX

#: Bucket counts allowed: powers of two in this range (16 .. 2^28 buckets).
MIN_BUCKET_BITS = 4
MAX_BUCKET_BITS = 28

#: Shards of the repair queue (one sorted set each, spread over the masters).
REPAIR_SHARDS = 16

#: Shards of the read temperature (director/temperature.py): each is a hash tag of its
#: own, so the shards spread over the cluster's slots (and masters) and no one master
#: takes every frontend's writes.
HEAT_SHARDS = 64

#: What directord hashes in front of a client key to make its index id (see item_index_id).
ITEM_ID_PREFIX = b"objmail-item:"

_BLOB_ID = re.compile(r"[0-9a-f]{64}")
_BLOB_ID_BYTES = re.compile(rb"[0-9a-f]{64}")


class InvalidBlobId(DirectorError, kinds.InvalidInput):
    """A string that is not a blob id (64 lowercase hex digits, a SHA-256)."""


def check_blob_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is 64 lowercase hex digits.

    :raises InvalidBlobId: anything else, named in the message.
    """
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise InvalidBlobId(f"not a blob id (64 lowercase hex digits): {blob_id!r}")
    return blob_id


def is_blob_id(key: bytes) -> bool:
    """True when an object-server key is a blob id (64 lowercase hex digits)."""
    return _BLOB_ID_BYTES.fullmatch(key) is not None


def item_index_id(key: bytes) -> str:
    """The location-index id of an object-server key.

    A blob id is its own index id.  Any other key (an item a memcached client stored
    through directord) is indexed under the SHA-256 of :data:`ITEM_ID_PREFIX` + key, which
    spreads such keys over the buckets like blob ids and keeps them apart from blob ids
    (a blob whose content were exactly prefix + key would share the entry, which costs
    reads a miss on the other's nodes, never wrong data).
    """
    if _BLOB_ID_BYTES.fullmatch(key):
        return key.decode("ascii")
    return hashlib.sha256(ITEM_ID_PREFIX + key).hexdigest()


def check_node_id(node_id: str) -> str:
    """Return ``node_id`` if it can name a node (as objstored accepts: no braces, no blanks).

    :raises ValueError: empty, too long, or with a brace (it would break hash tags) or blank.
    """
    if not node_id or len(node_id) > 200 or any(c in node_id for c in "{}") \
            or any(c.isspace() or not c.isprintable() for c in node_id):
        raise ValueError(f"not a node id (printable, no braces or blanks): {node_id!r}")
    return node_id


def check_job_name(job: str) -> str:
    """Return ``job`` if it can name a background job (``repair``, ``drain:<node id>``):
    the same characters as a node id.

    :raises ValueError: anything else.
    """
    check_node_id(job)
    return job


def encode_nodes(numbers: Iterable[int]) -> bytes:
    """Node numbers as the index stores them: sorted, unique, comma-separated."""
    nums = sorted(set(numbers))
    if not nums:
        raise ValueError("a location needs at least one node number")
    if nums[0] < 1:
        raise ValueError(f"node numbers start at 1, got {nums[0]}")
    return ",".join(map(str, nums)).encode("ascii")


def decode_nodes(value: bytes | str | None) -> tuple[int, ...]:
    """Inverse of :func:`encode_nodes`; ``None`` (no such field) is no nodes."""
    if value is None:
        return ()
    text = value.decode("ascii") if isinstance(value, bytes) else value
    if not text:
        return ()
    return tuple(int(part) for part in text.split(","))


def bucket_bits(buckets: int) -> int:
    """log2 of a bucket count; the count must be a power of two in range."""
    bits = buckets.bit_length() - 1
    if buckets < 1 or 1 << bits != buckets or not MIN_BUCKET_BITS <= bits <= MAX_BUCKET_BITS:
        raise ValueError(
            f"bucket count must be a power of two from {1 << MIN_BUCKET_BITS} to "
            f"{1 << MAX_BUCKET_BITS}, got {buckets}")
    return bits


@dataclass(frozen=True)
class IndexLayout:
    """Where a blob id lives in the index: bucket number/name and field bytes.

    :param buckets: number of buckets, a power of two (``DirectorConfig.index_buckets``).
    """

    buckets: int

    def __post_init__(self) -> None:
        bucket_bits(self.buckets)

    @property
    def bits(self) -> int:
        return bucket_bits(self.buckets)

    @property
    def name_digits(self) -> int:
        """Hex digits in a bucket name."""
        return (self.bits + 3) // 4

    @property
    def field_offset(self) -> int:
        """Bytes of the binary id left out of the field (the bucket name holds them)."""
        return self.bits // 8

    def bucket_of(self, blob_id: str) -> int:
        # The leading 32 bits are plenty for up to 2^28 buckets.
        return int(blob_id[:8], 16) >> (32 - self.bits)

    def bucket_name(self, bucket: int) -> str:
        """The bucket's name: the ids' first hex digits, the last one's unused bits zero.

        For a bit count that is a multiple of 4 this is exactly the ids' common prefix.
        """
        pad = self.name_digits * 4 - self.bits
        return format(bucket << pad, f"0{self.name_digits}x")

    def field_of(self, blob_id: str) -> bytes:
        return bytes.fromhex(blob_id)[self.field_offset:]

    def blob_id(self, bucket: int, field: bytes) -> str:
        """Rebuild the id from its bucket and field (for scans)."""
        head = bucket >> (self.bits - 8 * self.field_offset) if self.field_offset else 0
        raw = head.to_bytes(self.field_offset, "big") + field
        if len(raw) != 32:
            raise ValueError(f"index field of {len(field)} bytes in bucket {bucket}")
        return raw.hex()


@dataclass(frozen=True)
class Keyspace:
    """Key names under one prefix (tests use a private prefix per test)."""

    prefix: str = PREFIX

    # -- location index --------------------------------------------------------------

    def index_bucket(self, bucket_name: str) -> str:
        """HASH (listpack): binary id tail -> ``b"n1,n2"``."""
        return f"{self.prefix}ix:{bucket_name}"

    def item_bucket(self, bucket_name: str) -> str:
        """HASH (listpack), as :meth:`index_bucket`, for the items memcached clients store
        through directord under plain keys (field: the tail of
        :func:`item_index_id`).  A key space of its own: gc sweeps only the blobs'."""
        return f"{self.prefix}ixi:{bucket_name}"

    @property
    def index_meta(self) -> str:
        """HASH: ``buckets`` (fixed when the index is first used), ``created``, and
        ``items_flushed_before`` (the last ``flush_all`` through directord)."""
        return f"{self.prefix}index"

    @property
    def keyring(self) -> str:
        """HASH: fingerprints of the installation's keys, ``id`` and ``key:<n>``
        (director/keyregistry.py); written once per key, compared at every start."""
        return f"{self.prefix}keyring"

    # -- repair queue ----------------------------------------------------------------

    def repair_shard(self, shard: int) -> str:
        """ZSET: member = blob id (hex), score = unix time from which it may be claimed."""
        return f"{self.prefix}repair:{shard:x}"

    def repair_shard_of(self, blob_id: str) -> int:
        return int(blob_id[0], 16) % REPAIR_SHARDS

    # -- read temperature (director/temperature.py) ----------------------------------

    def heat_shard_of(self, blob_id: str) -> int:
        return int(blob_id[:2], 16) % HEAT_SHARDS

    def heat(self, shard: int) -> str:
        """ZSET: member = blob id, score = forward-decayed reads (see
        director/temperature.py); trimmed to the hottest ``temperature_keep``."""
        return f"{self.prefix}heat:{{h{shard:02x}}}:reads"

    def heat_seen(self, shard: int) -> str:
        """ZSET: member = blob id, score = unix time of its last recorded access (a
        sampled read or a write); trimmed to the ``temperature_keep`` most recent."""
        return f"{self.prefix}heat:{{h{shard:02x}}}:seen"

    def heat_meta(self, shard: int) -> str:
        """HASH: ``landmark`` (the time the shard's scores are relative to) and ``floor``
        (the latest access time trimmed from ``seen``: any blob not listed there was
        last accessed no later than this)."""
        return f"{self.prefix}heat:{{h{shard:02x}}}:meta"

    # -- background work (director/background.py) ------------------------------------

    def lease(self, job: str) -> str:
        """STRING with a TTL: who runs ``job`` now (a token naming the director)."""
        return f"{self.prefix}lease:{{{check_job_name(job)}}}"

    def job(self, job: str) -> str:
        """HASH: a background job's persisted progress (cursor, counters, times).

        Shares the lease's hash tag, so an operator finds both together.
        """
        return f"{self.prefix}job:{{{check_job_name(job)}}}"

    def gc_touched(self, bucket_key: str) -> str:
        """SET (intset/listpack): binary id tails that puts announced while gc runs, for
        one index bucket.  Its hash tag is the bucket's whole key, so the two share a slot
        and gc's compare-and-delete script sees both (director/collector.py)."""
        return f"{self.prefix}gc:{{{bucket_key}}}"

    # -- node registry (one hash slot: {reg}) ----------------------------------------

    def node(self, node_id: str) -> str:
        """HASH: address, site, zone, tier, weight, state, number, added, changed (objstored
        reads ``number`` and ``state`` of its own)."""
        return registry_key(node_id, self.prefix)

    @property
    def node_numbers(self) -> str:
        """HASH: node id -> its small number (numbers are never reused)."""
        return f"{self.prefix}{REGISTRY_TAG}:numbers"

    @property
    def next_number(self) -> str:
        """STRING counter: the last node number handed out."""
        return f"{self.prefix}{REGISTRY_TAG}:next-number"

    # -- load reports (written by objstored: objstore/reporter.py names them) -------------

    def report(self, node_id: str) -> str:
        """HASH with a TTL: the node's latest load report."""
        return report_key(node_id, self.prefix)

    def hot(self, node_id: str) -> str:
        """ZSET with a TTL: the node's hottest keys, score = reads per second."""
        return hot_key(node_id, self.prefix)

    @property
    def report_pattern(self) -> str:
        """SCAN MATCH pattern for every report key (braces are not special in it)."""
        return report_key("*", self.prefix)

    def report_node_id(self, key: str) -> str | None:
        """The node id in a report key, or None for any other key."""
        head, _, tail = report_key("\0", self.prefix).partition("\0")
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
            return key[len(head):-len(tail)]
        return None
