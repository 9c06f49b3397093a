"""Secrets named by the config: read once at start-up, passed down, never logged.

The config names files, never passwords, so that no password sits in a config file, in
a process's arguments (``ps``) or in its environment.  ``main()`` (or the ``objmail``
command) calls :func:`load_credentials` once, next to loading the config, and hands
:attr:`Credentials.redis` to whatever opens Redis connections and
:attr:`Credentials.pg_password` to whatever opens PostgreSQL connections.

A secret file must be private to its owner (no permission bits for group or others,
as ssh demands of a private key): a file others can read is a leaked password, and
refusing it at start-up is better than running with it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import ClusterConfig, ConfigError

__all__ = ["NO_REDIS_AUTH", "Credentials", "RedisAuth", "load_credentials", "read_secret",
           "write_secret"]

#: Longest secret file read; a password is short, anything longer is the wrong file.
MAX_SECRET_BYTES = 4096


def read_secret(path: str | Path, key: str, *, limit: int = MAX_SECRET_BYTES) -> str:
    """The secret in ``path``, without its trailing newline.

    :param key: the dotted config key naming the file, for the error.
    :param limit: the longest file accepted (a keyring holds more than a password).
    :raises ConfigError: missing, unreadable, readable or writable by group or others,
        empty, too long, or not UTF-8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(key, f"{path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(key, f"{path} is accessible by group or others (mode "
                                   f"{stat.S_IMODE(mode):04o}); chmod 600 {path}")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(key, f"{path} is longer than {limit} bytes: not a secret file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def write_secret(path: Path, secret: str) -> None:
    """Create ``path`` holding ``secret`` and a newline, mode 0600 from the first byte.

    Used by the dev launcher; an existing file is left as it is (its password is in use).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")


@dataclass(frozen=True)
class RedisAuth:
    """How to authenticate to Redis: ACL user, password, TLS.  ``repr`` hides the password."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for redis-py clients (``Redis``, ``RedisCluster``, sync or
        asyncio): only those that differ from redis-py's defaults."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
            if self.tls_ca:
                kwargs["ssl_ca_certs"] = self.tls_ca
            if self.tls_cert:
                kwargs["ssl_certfile"] = self.tls_cert
                kwargs["ssl_keyfile"] = self.tls_key
        return kwargs


#: No credentials: a Redis that lets the ``default`` user in without a password.
NO_REDIS_AUTH = RedisAuth()


@dataclass(frozen=True)
class Credentials:
    """What :func:`load_credentials` read for the ``[cluster]`` connections."""

    redis: RedisAuth = NO_REDIS_AUTH
    #: The PostgreSQL password (asyncpg's ``password=``), None = the DSN's or ~/.pgpass.
    pg_password: str | None = field(default=None, repr=False)


def _check_readable(path: str, key: str) -> None:
    # redis-py opens TLS files at the first connection; say what is wrong at start-up.
    if path and not os.access(path, os.R_OK):
        raise ConfigError(key, f"cannot read {path}")


def load_credentials(cluster: ClusterConfig) -> Credentials:
    """Read the secret files ``cluster`` names (once, at start-up).

    :raises ConfigError: a file is missing, unreadable or not private (names the key).
    """
    password = (read_secret(cluster.redis_password_file, "cluster.redis_password_file")
                if cluster.redis_password_file else None)
    for key in ("redis_tls_ca", "redis_tls_cert", "redis_tls_key"):
        _check_readable(getattr(cluster, key), f"cluster.{key}")
    redis = RedisAuth(username=cluster.redis_user or None, password=password,
                      tls=cluster.redis_tls, tls_ca=cluster.redis_tls_ca,
                      tls_cert=cluster.redis_tls_cert, tls_key=cluster.redis_tls_key)
    pg_password = (read_secret(cluster.pg_password_file, "cluster.pg_password_file")
                   if cluster.pg_password_file else None)
    return Credentials(redis=redis, pg_password=pg_password)
