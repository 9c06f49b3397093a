"""objmail configuration: one TOML file parsed once into frozen dataclasses.

Every process calls :func:`load_config` exactly once in its ``main()`` and passes
the resulting :class:`Config` (or the section it needs) down.  No other module
reads files or the environment for settings.

Each section is a frozen dataclass whose fields carry their defaults;
``objmail.example.toml`` lists every key at its default with a one-line reason.
Validation errors name the offending key (``objstore.max_item_size: ...``).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: The smallest ``director.gc_grace`` (and ``objmail gc --grace``) accepted by default:
#: gc's guard must outlast nearly every delivery from upload to commit, or slow ones fail
#: (temporarily: the commit re-checks its blobs) instead of landing.
MIN_GC_GRACE = 600.0

#: Environment variables that point objmail at existing servers.
ENV_PG_DSN = "OBJMAIL_PG_DSN"
ENV_REDIS_NODES = "OBJMAIL_REDIS_NODES"
ENV_CONFIG = "OBJMAIL_CONFIG"


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range.

    :param key: dotted key that is wrong (``section.name``), or ``""`` for the file.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


def parse_hostport(value: str, key: str = "") -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` allowed) and check the port range."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(key, f"expected host:port, got {value!r}")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(key, f"port is not a number in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port {port} out of range in {value!r}")
    return host, port


_SIZE_UNITS = {"": 1, "B": 1, "K": KIB, "KB": KIB, "KIB": KIB, "M": MIB, "MB": MIB,
               "MIB": MIB, "G": GIB, "GB": GIB, "GIB": GIB, "T": 1024 * GIB,
               "TB": 1024 * GIB, "TIB": 1024 * GIB}


def parse_size(value: str | int, key: str = "") -> int:
    """Parse a byte size such as ``4096``, ``"64K"``, ``"2G"`` (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(key, f"size must not be negative, got {value}")
        return value
    text = str(value).strip().upper().replace(" ", "")
    num = text.rstrip("KMGTIB")
    unit = text[len(num):]
    if unit not in _SIZE_UNITS or not num:
        raise ConfigError(key, f"not a size: {value!r} (use e.g. 4096, 64K, 1M, 2G)")
    try:
        number = float(num)
    except ValueError:
        raise ConfigError(key, f"not a size: {value!r}") from None
    if number < 0:
        raise ConfigError(key, f"size must not be negative, got {value!r}")
    return int(number * _SIZE_UNITS[unit])


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the shared services are; overridden by OBJMAIL_PG_DSN / OBJMAIL_REDIS_NODES."""

    pg_dsn: str = "postgresql://postgres@127.0.0.1:5433/objmail"
    redis_nodes: tuple[str, ...] = (
        "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003",
        "127.0.0.1:7004", "127.0.0.1:7005", "127.0.0.1:7006",
    )
    redis_prefix: str = "objmail:"

    def __post_init__(self) -> None:
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.:-]*:", self.redis_prefix)), "redis_prefix",
               f"must be letters, digits, '_.:-' and end with ':', got {self.redis_prefix!r}")
        _check(bool(self.redis_nodes), "redis_nodes", "at least one startup node is needed")
        for node in self.redis_nodes:
            parse_hostport(node, "redis_nodes")
        _check(self.pg_dsn.startswith(("postgresql://", "postgres://")), "pg_dsn",
               f"expected a postgresql:// URL, got {self.pg_dsn!r}")

    @property
    def redis_startup_nodes(self) -> list[tuple[str, int]]:
        return [parse_hostport(n, "cluster.redis_nodes") for n in self.redis_nodes]


@dataclass(frozen=True)
class ObjstoreConfig:
    """One object server (objstored)."""

    listen: str = "127.0.0.1:11211"
    data_dir: str = "var/objstore/1"
    node_id: str = ""
    zone: str = "default"
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
    slow_reader_timeout: float = 30.0
    expire_sweep_interval: float = 60.0

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        _check(1 <= self.workers <= 64, "workers", f"must be 1..64, got {self.workers}")
        _check(KIB <= self.max_item_size <= 64 * MIB, "max_item_size",
               f"must be between 1 KiB and 64 MiB, got {self.max_item_size}")
        _check(self.map_size >= 16 * MIB, "map_size", "must be at least 16 MiB")
        _check(self.max_connections >= 1, "max_connections", "must be at least 1")
        _check(self.max_line >= 512, "max_line", "must be at least 512")
        _check(self.group_commit_max >= 1, "group_commit_max", "must be at least 1")
        _check(self.report_interval > 0, "report_interval", "must be positive")
        _check(self.report_ttl > self.report_interval, "report_ttl",
               "must be longer than report_interval, or every node looks down")
        _check(self.capacity_bytes >= 0, "capacity_bytes", "must not be negative")
        _check(self.idle_timeout >= 0, "idle_timeout", "must be 0 (off) or positive")
        _check(self.max_pipeline >= 1, "max_pipeline", "must be at least 1")
        _check(self.slow_reader_timeout >= 0, "slow_reader_timeout",
               "must be 0 (off) or positive")
        _check(self.expire_sweep_interval >= 0, "expire_sweep_interval",
               "must be 0 (off) or positive")


@dataclass(frozen=True)
class DirectorConfig:
    """Placement, replication and the blob client used in-process and by directord."""

    listen: str = "127.0.0.1:11311"
    replicas: int = 2
    write_quorum: int = 2
    write_tier: str = "ssd"
    compression_level: int = 1
    encryption_key_file: str = ""
    timeout: float = 2.0
    cache_bytes: int = 64 * MIB
    disk_cache_dir: str = ""
    disk_cache_bytes: int = 1 * GIB
    pool_size: int = 8
    index_buckets: int = 65536
    metrics_listen: str = "127.0.0.1:9101"
    lease_ttl: float = 60.0
    repair_interval: float = 30.0
    repair_batch: int = 256
    repair_max_blobs: int = 10000
    repair_retry_delay: float = 300.0
    repair_down_grace: float = 600.0
    repair_scan_buckets: int = 4096
    drain_interval: float = 10.0
    drain_max_blobs: int = 10000
    level_interval: float = 300.0
    level_tolerance: float = 0.05
    level_bytes_per_pass: int = 256 * MIB
    level_scan_entries: int = 2000
    gc_grace: float = 3600.0
    gc_min_grace: float = MIN_GC_GRACE
    index_write_replicas: int = 1
    index_write_timeout: float = 1.0

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        _check(1 <= self.replicas <= 8, "replicas", f"must be 1..8, got {self.replicas}")
        _check(1 <= self.write_quorum <= self.replicas, "write_quorum",
               f"must be 1..replicas ({self.replicas}), got {self.write_quorum}")
        _check(-1 <= self.compression_level <= 9, "compression_level",
               "must be -1 (off) or 0..9")
        _check(self.timeout > 0, "timeout", "must be positive")
        _check(self.pool_size >= 1, "pool_size", "must be at least 1")
        _check(16 <= self.index_buckets <= 1 << 28
               and self.index_buckets & (self.index_buckets - 1) == 0, "index_buckets",
               f"must be a power of two from 16 to 2^28, got {self.index_buckets}")
        _check(self.lease_ttl >= 1, "lease_ttl", "must be at least 1 second")
        for key in ("repair_interval", "drain_interval", "level_interval"):
            _check(getattr(self, key) >= 0, key, "must be 0 (off) or positive")
        for key in ("repair_batch", "repair_max_blobs", "repair_scan_buckets",
                    "drain_max_blobs", "level_scan_entries"):
            _check(getattr(self, key) >= 1, key, "must be at least 1")
        _check(self.repair_retry_delay >= 0, "repair_retry_delay", "must not be negative")
        _check(self.repair_down_grace >= 0, "repair_down_grace", "must not be negative")
        _check(self.gc_min_grace >= 0, "gc_min_grace", "must not be negative")
        _check(self.gc_grace >= self.gc_min_grace, "gc_grace",
               f"must be at least gc_min_grace ({self.gc_min_grace:g} s), got "
               f"{self.gc_grace:g}")
        _check(0 <= self.index_write_replicas <= 8, "index_write_replicas",
               f"must be 0..8, got {self.index_write_replicas}")
        _check(self.index_write_timeout > 0, "index_write_timeout", "must be positive")
        _check(0 < self.level_tolerance < 1, "level_tolerance",
               f"must be a fraction of capacity between 0 and 1, got {self.level_tolerance}")
        _check(self.level_bytes_per_pass >= 1, "level_bytes_per_pass", "must be at least 1")


@dataclass(frozen=True)
class MetadataConfig:
    """PostgreSQL access and message splitting."""

    split_threshold: int = 4 * KIB
    pool_min: int = 2
    pool_max: int = 10

    def __post_init__(self) -> None:
        _check(self.split_threshold >= 64, "split_threshold", "must be at least 64 bytes")
        _check(1 <= self.pool_min <= self.pool_max, "pool_min", "must be 1..pool_max")


@dataclass(frozen=True)
class ImapdConfig:
    """The mailbox server: IMAP, IMAPS, POP3 and LMTP listeners."""

    imap_listen: str = "127.0.0.1:1143"
    imaps_listen: str = "127.0.0.1:1993"
    pop3_listen: str = "127.0.0.1:1110"
    lmtp_listen: str = "127.0.0.1:2424"
    tls_cert: str = ""
    tls_key: str = ""
    allow_plaintext_auth: bool = False
    max_line: int = 64 * KIB
    max_literal: int = 64 * MIB
    max_message_size: int = 64 * MIB
    idle_timeout: float = 1800.0
    login_delay: float = 1.0
    max_connections: int = 4096
    pop3_idle_timeout: float = 600.0
    notify_keepalive: float = 30.0
    metrics_listen: str = "127.0.0.1:9102"

    def __post_init__(self) -> None:
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        _check(self.max_connections >= 1, "max_connections", "must be at least 1")
        _check(self.pop3_idle_timeout >= 0, "pop3_idle_timeout", "must be 0 (off) or positive")
        _check(self.notify_keepalive > 0, "notify_keepalive", "must be positive")
        for key in ("imap_listen", "imaps_listen", "pop3_listen", "lmtp_listen"):
            value = getattr(self, key)
            if value:
                parse_hostport(value, key)
        _check(bool(self.tls_cert) == bool(self.tls_key), "tls_key",
               "tls_cert and tls_key must be set together")
        _check(self.max_line >= 1024, "max_line", "must be at least 1024")


@dataclass(frozen=True)
class Config:
    """The whole file."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    objstore: ObjstoreConfig = field(default_factory=ObjstoreConfig)
    director: DirectorConfig = field(default_factory=DirectorConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    imapd: ImapdConfig = field(default_factory=ImapdConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        errors = []
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(key, " or ".join(errors))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(key, "expected nothing")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {type(value).__name__}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            # Sizes may be written "64M" for readability.
            return parse_size(value, key)
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    raise TypeError(f"config annotation {tp!r} at {key} is not supported")  # our bug


def _build(cls: type[Any], table: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(table) - names):
        dotted = f"{prefix}.{unknown}" if prefix else unknown
        raise ConfigError(dotted, "unknown key (see objmail.example.toml for every key)")
    kwargs = {}
    for name, value in table.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc.key}" if prefix and exc.key else exc.key or prefix,
                          exc.message) from None


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML, then apply environment overrides."""
    config: Config = _build(Config, data, "")
    return apply_environ(config, environ or {})


def apply_environ(config: Config, environ: Mapping[str, str]) -> Config:
    """Let OBJMAIL_PG_DSN and OBJMAIL_REDIS_NODES point at existing servers."""
    cluster = config.cluster
    changes: dict[str, Any] = {}
    if environ.get(ENV_PG_DSN):
        changes["pg_dsn"] = environ[ENV_PG_DSN]
    if environ.get(ENV_REDIS_NODES):
        nodes = tuple(n.strip() for n in environ[ENV_REDIS_NODES].split(",") if n.strip())
        changes["redis_nodes"] = nodes
    if not changes:
        return config
    try:
        cluster = dataclasses.replace(cluster, **changes)
    except ConfigError as exc:
        env = ENV_PG_DSN if exc.key == "pg_dsn" else ENV_REDIS_NODES
        raise ConfigError(env, exc.message) from None
    return dataclasses.replace(config, cluster=cluster)


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or use the defaults when None) and apply the environment.

    :raises ConfigError: the file is missing, is not TOML, or holds a bad value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("", f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"config file {p} is not valid TOML: {exc}") from None
    try:
        return parse_config(data, environ)
    except ConfigError as exc:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(exc.key, f"{exc.message}{where}") from None


def find_config_path(explicit: str | None, environ: Mapping[str, str],
                     cwd: Path) -> Path | None:
    """Pick the config file: --config, then $OBJMAIL_CONFIG, then ./objmail.toml,
    then ./var/objmail.toml (written by ``objmail dev up``)."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    for candidate in (cwd / "objmail.toml", cwd / "var" / "objmail.toml"):
        if candidate.is_file():
            return candidate
    return None


def to_toml(config: Config) -> str:
    """Render a config as TOML (used by the dev launcher to write var/objmail.toml)."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        sub = getattr(config, section.name)
        for f in dataclasses.fields(sub):
            lines.append(f"{f.name} = {_toml_value(getattr(sub, f.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")
