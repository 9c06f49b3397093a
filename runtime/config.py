"""objmail configuration: one TOML file parsed once into frozen dataclasses.

Every process calls :func:`load` exactly once in its ``main()`` with a dataclass
whose fields are the sections it uses (objstored: ``cluster`` and ``objstore``;
``ops.config.Config`` is the whole file) and passes each component only its own
section.  No other module reads files or the environment for settings.

Each section is a frozen dataclass living with its component (``objstore.config``,
``director.config``, ``metadata.config``, ``imapd.config``; ``cluster`` here, as every
component uses it), whose fields carry their defaults;
``objmail.example.toml`` lists every key at its default with a one-line reason.
Validation errors name the offending key (``objstore.max_item_size: ...``).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

C = TypeVar("C")

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


def check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def check_tls_files(cert: str, key: str, ca: str, prefix: str = "") -> None:
    """A listener's ``<prefix>tls_cert``/``tls_key``/``tls_ca``: the certificate and the
    key together, a CA (which verifies clients) only with them."""
    check(bool(cert) == bool(key), f"{prefix}tls_key",
          f"{prefix}tls_cert and {prefix}tls_key must be set together")
    check(not ca or bool(cert), f"{prefix}tls_ca",
          f"verifies clients of a TLS listener: needs {prefix}tls_cert")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the shared services are; overridden by OBJMAIL_PG_DSN / OBJMAIL_REDIS_NODES."""

    pg_dsn: str = "postgresql://postgres@127.0.0.1:5433/objmail"
    redis_nodes: tuple[str, ...] = (
        "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003",
        "127.0.0.1:7004", "127.0.0.1:7005", "127.0.0.1:7006",
    )
    redis_prefix: str = "objmail:"
    #: Redis ACL user objmail authenticates as ("" = the ``default`` user).
    redis_user: str = ""
    #: File holding the Redis password (mode 0600); "" = no AUTH.
    redis_password_file: str = ""
    redis_tls: bool = False
    #: CA bundle that signed the Redis servers' certificates ("" = the system's).
    redis_tls_ca: str = ""
    #: Client certificate and key, for a Redis that verifies clients (tls-auth-clients).
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    #: File holding the password of the pg_dsn user (mode 0600); "" = none or ~/.pgpass.
    pg_password_file: str = ""

    def __post_init__(self) -> None:
        check(bool(re.fullmatch(r"[A-Za-z0-9_.:-]*:", self.redis_prefix)), "redis_prefix",
               f"must be letters, digits, '_.:-' and end with ':', got {self.redis_prefix!r}")
        check(bool(self.redis_nodes), "redis_nodes", "at least one startup node is needed")
        for node in self.redis_nodes:
            parse_hostport(node, "redis_nodes")
        check(self.pg_dsn.startswith(("postgresql://", "postgres://")), "pg_dsn",
               f"expected a postgresql:// URL, got {self.pg_dsn!r}")
        check(not self.redis_user or bool(self.redis_password_file), "redis_password_file",
               "redis_user needs a password file")
        check(bool(self.redis_tls_cert) == bool(self.redis_tls_key), "redis_tls_key",
               "redis_tls_cert and redis_tls_key must be set together")
        for key in ("redis_tls_ca", "redis_tls_cert"):
            check(self.redis_tls or not getattr(self, key), key, "needs redis_tls = true")

    @property
    def redis_startup_nodes(self) -> list[tuple[str, int]]:
        return [parse_hostport(n, "cluster.redis_nodes") for n in self.redis_nodes]


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


#: The sections of an objmail config file.  Each process builds only the sections it
#: uses; the names are listed here so that a misspelt section is still an error there.
SECTION_NAMES: Final = ("cluster", "objstore", "director", "metadata", "imapd")


def _build(cls: type[Any], table: Mapping[str, Any], prefix: str,
           tolerated: Iterable[str] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(table) - names - set(tolerated)):
        dotted = f"{prefix}.{unknown}" if prefix else unknown
        raise ConfigError(dotted, "unknown key (see objmail.example.toml for every key)")
    kwargs = {}
    for name, value in table.items():
        if name not in names:
            continue
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc.key}" if prefix and exc.key else exc.key or prefix,
                          exc.message) from None


def parse_config(cls: type[C], data: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None) -> C:
    """Build ``cls`` (a dataclass whose fields are sections) from parsed TOML, then apply
    environment overrides.  Sections of the file that ``cls`` does not use are skipped,
    but an unknown section name is an error."""
    config: C = _build(cls, data, "", tolerated=SECTION_NAMES)
    return apply_environ(config, environ or {})


def apply_environ(config: C, environ: Mapping[str, str]) -> C:
    """Let OBJMAIL_PG_DSN and OBJMAIL_REDIS_NODES point at existing servers."""
    cluster = getattr(config, "cluster", None)
    if not isinstance(cluster, ClusterConfig):
        return config
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
    return dataclasses.replace(config, cluster=cluster)  # type: ignore[type-var]


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """The parsed file (``{}`` for None).

    :raises ConfigError: the file is missing or is not TOML.
    """
    if path is None:
        return {}
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {p} is not valid TOML: {exc}") from None


def load(cls: type[C], path: str | Path | None,
         environ: Mapping[str, str] | None = None) -> C:
    """Read ``path`` (or use the defaults when None) into ``cls`` and apply the environment.

    :raises ConfigError: the file is missing, is not TOML, or holds a bad value.
    """
    data = read_toml(path)
    try:
        return parse_config(cls, data, environ)
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


def to_toml(config: Any) -> str:
    """Render a config as TOML (used by the dev launcher to write var/objmail.toml)."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        sub = getattr(config, section.name)
        tables: list[tuple[str, Any]] = []
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                # A list of tables ([[director.tiers]]) must follow the section's keys.
                tables += [(f.name, item) for item in value]
                continue
            lines.append(f"{f.name} = {toml_value(value)}")
        for name, item in tables:
            lines.append(f"[[{section.name}.{name}]]")
            lines += [f"{g.name} = {toml_value(getattr(item, g.name))}"
                      for g in dataclasses.fields(item)]
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """``value`` (bool, number, string or list of them) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")
