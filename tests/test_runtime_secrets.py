"""Secret files named by ``[cluster]``: read once, refused when others can read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.config import ClusterConfig, ConfigError, load
from runtime.secrets import RedisAuth, load_credentials, read_secret, write_secret


@dataclass(frozen=True)
class _ClusterOnly:
    """A file with only a ``[cluster]`` section, loaded as a daemon loads its sections."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def secret_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "pw") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("s3cret\n", "s3cret"),
    ("s3cret", "s3cret"),
    ("s3cret\r\n", "s3cret"),
    (" two words \n", " two words "),
    ("line\n\n", "line\n"),
])
def test_read_secret_strips_one_trailing_newline(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    """The file's content is the secret, less the newline an editor or echo appends."""
    assert read_secret(secret_file(tmp_path, text), "cluster.x") == expected


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620, 0o644])
def test_read_secret_refuses_files_others_can_access(tmp_path: Path, mode: int) -> None:
    """A secret file with any permission for group or others is refused, naming the key,
    the mode and the fix."""
    path = secret_file(tmp_path, "pw\n", mode)
    with pytest.raises(ConfigError) as info:
        read_secret(path, "cluster.redis_password_file")
    assert info.value.key == "cluster.redis_password_file"
    assert f"{mode:04o}" in str(info.value) and f"chmod 600 {path}" in str(info.value)


@pytest.mark.parametrize(("setup", "words"), [
    ("missing", "cannot read"),
    ("empty", "is empty"),
    ("newline", "is empty"),
    ("directory", "not a regular file"),
    ("binary", "not UTF-8"),
    ("huge", "longer than"),
])
def test_read_secret_errors(tmp_path: Path, setup: str, words: str) -> None:
    """Unusable secret files are configuration errors that say what is wrong."""
    path = tmp_path / "pw"
    if setup == "empty":
        secret_file(tmp_path, "")
    elif setup == "newline":
        secret_file(tmp_path, "\n")
    elif setup == "directory":
        path.mkdir(mode=0o700)
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe")
        path.chmod(0o600)
    elif setup == "huge":
        secret_file(tmp_path, "x" * 5000)
    with pytest.raises(ConfigError, match=words) as info:
        read_secret(path, "cluster.pg_password_file")
    assert info.value.key == "cluster.pg_password_file"


def test_write_secret_creates_a_private_file_once(tmp_path: Path) -> None:
    """write_secret makes a 0600 file in a 0700 directory and never overwrites one."""
    path = tmp_path / "secrets" / "pw"
    write_secret(path, "abc")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert read_secret(path, "k") == "abc"
    with pytest.raises(FileExistsError):
        write_secret(path, "other")


def test_load_credentials_reads_the_named_files(tmp_path: Path) -> None:
    """The Redis user, password and TLS files and the PostgreSQL password come from the
    config's files; repr never shows a password."""
    redis_pw = secret_file(tmp_path, "redis-pw\n", name="r")
    pg_pw = secret_file(tmp_path, "pg-pw\n", name="p")
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    creds = load_credentials(ClusterConfig(
        redis_user="objmail", redis_password_file=str(redis_pw), redis_tls=True,
        redis_tls_ca=str(ca), pg_password_file=str(pg_pw)))
    assert creds.redis == RedisAuth("objmail", "redis-pw", tls=True, tls_ca=str(ca))
    assert creds.pg_password == "pg-pw"
    assert creds.redis.client_kwargs() == {"username": "objmail", "password": "redis-pw",
                                           "ssl": True, "ssl_ca_certs": str(ca)}
    assert "redis-pw" not in repr(creds) and "pg-pw" not in repr(creds)


def test_no_credentials_configured_means_redis_py_defaults() -> None:
    """Without secret files nothing is read and redis-py gets no extra arguments."""
    creds = load_credentials(ClusterConfig())
    assert creds.redis.client_kwargs() == {} and creds.pg_password is None


def test_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    """A TLS file that cannot be read stops start-up naming its key, not at the first
    connection."""
    with pytest.raises(ConfigError) as info:
        load_credentials(ClusterConfig(redis_tls=True,
                                       redis_tls_ca=str(tmp_path / "nope.pem")))
    assert info.value.key == "cluster.redis_tls_ca"


@pytest.mark.parametrize(("toml", "key", "words"), [
    ('redis_user = "objmail"', "cluster.redis_password_file", "needs a password file"),
    ('redis_tls_ca = "ca.pem"', "cluster.redis_tls_ca", "redis_tls = true"),
    ('redis_tls = true\nredis_tls_cert = "c.pem"', "cluster.redis_tls_key", "together"),
])
def test_cluster_credential_keys_are_checked(tmp_path: Path, toml: str, key: str,
                                             words: str) -> None:
    """Credential settings that cannot work together are refused naming the key."""
    path = tmp_path / "c.toml"
    path.write_text(f"[cluster]\n{toml}\n")
    with pytest.raises(ConfigError, match=words) as info:
        load(_ClusterOnly, path, {})
    assert info.value.key == key


def test_read_only_secret_file_is_accepted(tmp_path: Path) -> None:
    """Only the permission bits matter: a 0400 file is fine."""
    path = secret_file(tmp_path, "ro\n", 0o400)
    assert read_secret(path, "k") == "ro"
