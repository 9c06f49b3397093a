"""objstored's config: the ``[objstore]`` section, and the sections objstored reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.config import GIB, KIB, MIB, ClusterConfig, check, check_tls_files, parse_hostport


@dataclass(frozen=True)
class ObjstoreConfig:
    """One object server (objstored)."""

    listen: str = "127.0.0.1:11211"
    data_dir: str = "var/objstore/1"
    node_id: str = ""
    zone: str = "default"
    site: str = "default"
    tier: str = "ssd"
    workers: int = 1
    max_item_size: int = 1 * MIB
    map_size: int = 64 * GIB
    capacity_bytes: int = 0
    max_connections: int = 1024
    max_line: int = 8 * KIB
    flush_all_enabled: bool = False
    group_commit_max: int = 256
    report_interval: float = 5.0
    report_ttl: int = 30
    hot_keys: int = 32
    idle_timeout: float = 0.0
    max_pipeline: int = 1024
    max_reply_buffer: int = 8 * MIB
    slow_reader_timeout: float = 30.0
    expire_sweep_interval: float = 60.0
    metrics_listen: str = "127.0.0.1:9111"
    #: memcached's authfile (``user:password`` lines, mode 0600): clients must
    #: authenticate as one of them; empty = anyone may connect.
    auth_file: str = ""
    #: PEM certificate (chain) and key: the port speaks TLS only.
    tls_cert: str = ""
    tls_key: str = ""
    #: PEM CA: clients must present a certificate it signed.
    tls_ca: str = ""

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        check(1 <= self.workers <= 64, "workers", f"must be 1..64, got {self.workers}")
        check(KIB <= self.max_item_size <= 64 * MIB, "max_item_size",
               f"must be between 1 KiB and 64 MiB, got {self.max_item_size}")
        check(self.map_size >= 16 * MIB, "map_size", "must be at least 16 MiB")
        check(self.max_connections >= 1, "max_connections", "must be at least 1")
        check(self.max_line >= 512, "max_line", "must be at least 512")
        check(self.group_commit_max >= 1, "group_commit_max", "must be at least 1")
        check(self.report_interval > 0, "report_interval", "must be positive")
        check(self.report_ttl > self.report_interval, "report_ttl",
               "must be longer than report_interval, or every node looks down")
        check(self.capacity_bytes >= 0, "capacity_bytes", "must not be negative")
        check(self.idle_timeout >= 0, "idle_timeout", "must be 0 (off) or positive")
        check(self.max_pipeline >= 1, "max_pipeline", "must be at least 1")
        check(self.max_reply_buffer >= 64 * KIB, "max_reply_buffer", "must be at least 64 KiB")
        check(self.slow_reader_timeout >= 0, "slow_reader_timeout",
               "must be 0 (off) or positive")
        check(self.expire_sweep_interval >= 0, "expire_sweep_interval",
               "must be 0 (off) or positive")
        check_tls_files(self.tls_cert, self.tls_key, self.tls_ca)

@dataclass(frozen=True)
class ObjstoredConfig:
    """What objstored reads of the file: where Redis is (load reports) and its section."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    objstore: ObjstoreConfig = field(default_factory=ObjstoreConfig)
