"""The director's config: the ``[director]`` section, and what directord reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.config import (
    GIB,
    KIB,
    MIB,
    ClusterConfig,
    check,
    check_tls_files,
    parse_hostport,
)

#: The smallest ``director.gc_grace`` (and ``objmail gc --grace``) accepted by default:
#: gc's guard must outlast nearly every delivery from upload to commit, or slow ones fail
#: (temporarily: the commit re-checks its blobs) instead of landing.
MIN_GC_GRACE = 600.0


@dataclass(frozen=True)
class TierConfig:
    """One storage tier (``[[director.tiers]]``): the nodes registered with this tier
    name, how fast they are, and how many copies of a blob they hold.

    A blob is *hot* while it is new or read often, *cold* once it has not been read
    for ``director.tier_cold_after``; it keeps ``replicas`` copies here while hot and
    ``cold_replicas`` while cold (``objmail tier`` moves it between the two layouts).
    """

    name: str = ""
    #: Speed rank: reads prefer the lowest rank holding a copy (0 = fastest).
    rank: int = 0
    #: Copies of a hot (or new) blob on this tier.
    replicas: int = 0
    #: Copies of a cold blob on this tier.
    cold_replicas: int = 0

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "a tier needs a name (the nodes' --tier)")
        check(self.rank >= 0, "rank", "must not be negative")
        for key in ("replicas", "cold_replicas"):
            check(0 <= getattr(self, key) <= 8, key, "must be 0..8")


@dataclass(frozen=True)
class DirectorConfig:
    """Placement, replication and the blob client used in-process and by directord."""

    listen: str = "127.0.0.1:11311"
    max_connections: int = 1024
    max_line: int = 8 * KIB
    max_item_size: int = 1 * MIB
    max_pipeline: int = 128
    max_reply_buffer: int = 8 * MIB
    idle_timeout: float = 0.0
    slow_reader_timeout: float = 30.0
    flush_all_enabled: bool = False
    replicas: int = 2
    write_quorum: int = 2
    #: At most this many copies of a blob per site (0: no rule; see director.sites).
    replicas_per_site: int = 0
    #: This process's site: its reads try copies there first ("" = none).
    site: str = ""
    write_tier: str = "ssd"
    compression_level: int = 1
    keyring_file: str = ""
    allow_plaintext: bool = False
    encryption_key_file: str = ""
    object_max_item_size: int = 1 * MIB
    timeout: float = 2.0
    cache_bytes: int = 64 * MIB
    #: directord: plain items' index entries kept in memory, invalidated by Redis
    #: (director/tracking.py); 0 = every get looks its key up in Redis.
    location_cache_entries: int = 0
    disk_cache_dir: str = ""
    disk_cache_bytes: int = 1 * GIB
    pool_size: int = 8
    index_buckets: int = 65536
    metrics_listen: str = "127.0.0.1:9101"
    #: directord's processes sharing ``listen`` (SO_REUSEPORT); 0 = one per core.  Worker
    #: i serves its metrics on ``metrics_listen``'s port + i.
    workers: int = 1
    lease_ttl: float = 60.0
    repair_interval: float = 30.0
    repair_batch: int = 256
    repair_max_blobs: int = 10000
    repair_retry_delay: float = 300.0
    repair_down_grace: float = 600.0
    repair_scan_buckets: int = 4096
    drain_interval: float = 10.0
    drain_max_blobs: int = 10000
    repair_rate: int = 64 * MIB
    level_interval: float = 300.0
    level_tolerance: float = 0.10
    level_bytes_per_pass: int = 256 * MIB
    level_rate: int = 64 * MIB
    level_source_rate: int = 32 * MIB
    level_scan_entries: int = 2000
    temperature_half_life: float = 3600.0
    temperature_sample: float = 1.0
    temperature_keep: int = 2048
    temperature_flush_interval: float = 1.0
    temperature_max_pending: int = 65536
    #: Storage hierarchy: empty = one tier (``write_tier``), ``replicas`` copies.
    tiers: tuple[TierConfig, ...] = ()
    tier_cold_after: float = 3 * 86400.0
    tier_hot_reads: float = 8.0
    tier_interval: float = 600.0
    tier_rate: int = 32 * MIB
    tier_max_blobs: int = 10000
    gc_grace: float = 3600.0
    gc_min_grace: float = MIN_GC_GRACE
    index_write_replicas: int = 1
    index_write_timeout: float = 1.0
    #: directord's clients: memcached's authfile (``user:password`` lines, mode 0600)
    #: and TLS (certificate, key; a CA makes client certificates required).
    auth_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    #: How this director reaches the object servers: a memcached authfile whose first
    #: ``user:password`` it authenticates with, and TLS (on when a CA is set; the client
    #: certificate and key are for object servers that verify clients).
    objstore_auth_file: str = ""
    objstore_tls_ca: str = ""
    objstore_tls_cert: str = ""
    objstore_tls_key: str = ""

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        check(0 <= self.workers <= 64, "workers",
              f"must be 0 (one per core) to 64, got {self.workers}")
        check(self.max_connections >= 1, "max_connections", "must be at least 1")
        check(self.max_line >= 512, "max_line", "must be at least 512")
        check(KIB <= self.max_item_size <= 64 * MIB, "max_item_size",
              f"must be between 1 KiB and 64 MiB, got {self.max_item_size}")
        check(self.max_pipeline >= 1, "max_pipeline", "must be at least 1")
        check(self.max_reply_buffer >= 64 * KIB, "max_reply_buffer", "must be at least 64 KiB")
        check(self.idle_timeout >= 0, "idle_timeout", "must be 0 (off) or positive")
        check(self.slow_reader_timeout >= 0, "slow_reader_timeout",
              "must be 0 (off) or positive")
        check(1 <= self.replicas <= 8, "replicas", f"must be 1..8, got {self.replicas}")
        # With tiers the copies are their hot layout's (checked below), not ``replicas``.
        check(bool(self.tiers) or 1 <= self.write_quorum <= self.replicas, "write_quorum",
              f"must be 1..replicas ({self.replicas}), got {self.write_quorum}")
        check(0 <= self.replicas_per_site <= self.replicas, "replicas_per_site",
              f"must be 0 (no rule) to replicas ({self.replicas}), got "
              f"{self.replicas_per_site}")
        check(-1 <= self.compression_level <= 9, "compression_level",
               "must be -1 (off) or 0..9")
        check(KIB <= self.object_max_item_size <= 64 * MIB, "object_max_item_size",
              "must be between 1 KiB and 64 MiB (the object servers' max_item_size)")
        check(self.timeout > 0, "timeout", "must be positive")
        check(self.pool_size >= 1, "pool_size", "must be at least 1")
        check(16 <= self.index_buckets <= 1 << 28
               and self.index_buckets & (self.index_buckets - 1) == 0, "index_buckets",
               f"must be a power of two from 16 to 2^28, got {self.index_buckets}")
        check(self.lease_ttl >= 1, "lease_ttl", "must be at least 1 second")
        for key in ("repair_interval", "drain_interval", "level_interval"):
            check(getattr(self, key) >= 0, key, "must be 0 (off) or positive")
        for key in ("repair_batch", "repair_max_blobs", "repair_scan_buckets",
                    "drain_max_blobs", "level_scan_entries"):
            check(getattr(self, key) >= 1, key, "must be at least 1")
        check(self.repair_retry_delay >= 0, "repair_retry_delay", "must not be negative")
        check(self.repair_down_grace >= 0, "repair_down_grace", "must not be negative")
        check(self.gc_min_grace >= 0, "gc_min_grace", "must not be negative")
        check(self.gc_grace >= self.gc_min_grace, "gc_grace",
              f"must be at least gc_min_grace ({self.gc_min_grace:g} s), got "
              f"{self.gc_grace:g}")
        check(0 <= self.location_cache_entries <= 100_000_000, "location_cache_entries",
              f"must be 0 (off) to 100000000, got {self.location_cache_entries}")
        check(0 <= self.index_write_replicas <= 8, "index_write_replicas",
              f"must be 0..8, got {self.index_write_replicas}")
        check(self.index_write_timeout > 0, "index_write_timeout", "must be positive")
        check(0 < self.level_tolerance < 1, "level_tolerance",
               f"must be a fraction of the mean between 0 and 1, got {self.level_tolerance}")
        check(self.level_bytes_per_pass >= 1, "level_bytes_per_pass", "must be at least 1")
        check_tls_files(self.tls_cert, self.tls_key, self.tls_ca)
        check(bool(self.objstore_tls_cert) == bool(self.objstore_tls_key), "objstore_tls_key",
              "objstore_tls_cert and objstore_tls_key must be set together")
        check(not self.objstore_tls_cert or bool(self.objstore_tls_ca), "objstore_tls_ca",
              "a client certificate is for TLS, which objstore_tls_ca turns on")
        for key in ("repair_rate", "level_rate", "level_source_rate", "tier_rate"):
            check(getattr(self, key) >= 0, key, "must be 0 (no limit) or positive bytes/s")
        check(self.temperature_half_life > 0, "temperature_half_life", "must be positive")
        check(0 <= self.temperature_sample <= 1, "temperature_sample",
              f"must be a fraction of reads, 0 (off) to 1, got {self.temperature_sample}")
        check(self.temperature_keep >= 16, "temperature_keep", "must be at least 16")
        check(self.temperature_flush_interval > 0, "temperature_flush_interval",
              "must be positive")
        check(self.temperature_max_pending >= 1, "temperature_max_pending",
              "must be at least 1")
        names = [t.name for t in self.tiers]
        check(len(set(names)) == len(names), "tiers", f"tier names repeat: {names}")
        if self.tiers:
            hot = sum(t.replicas for t in self.tiers)
            cold = sum(t.cold_replicas for t in self.tiers)
            check(1 <= hot <= 8, "tiers", f"the tiers' replicas must add up to 1..8, got {hot}")
            check(1 <= cold <= 8, "tiers",
                  f"the tiers' cold_replicas must add up to 1..8, got {cold}")
            check(1 <= self.write_quorum <= hot, "write_quorum",
                  f"must be at most the tiers' replicas ({hot}), got {self.write_quorum}")
        check(self.tier_cold_after > 0, "tier_cold_after", "must be positive")
        check(self.tier_hot_reads > 0, "tier_hot_reads", "must be positive")
        check(self.tier_interval >= 0, "tier_interval", "must be 0 (off) or positive")
        check(self.tier_max_blobs >= 1, "tier_max_blobs", "must be at least 1")

@dataclass(frozen=True)
class DirectordConfig:
    """What directord reads of the file."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    director: DirectorConfig = field(default_factory=DirectorConfig)
