"""Unit tests of config parsing: types, validation messages, env overrides, the sample file."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from ops.config import (
    Config,
    ConfigError,
    find_config_path,
    load_config,
    parse_config,
    parse_size,
    to_toml,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_file() -> None:
    """No file means the documented defaults."""
    assert load_config(None, {}) == Config()


def test_example_file_lists_every_key_at_its_default() -> None:
    """objmail.example.toml names every key of every section, each at its default."""
    data = tomllib.loads((ROOT / "objmail.example.toml").read_text())
    config = Config()
    for section in dataclasses.fields(config):
        sub = getattr(config, section.name)
        keys = {f.name for f in dataclasses.fields(sub)}
        assert set(data[section.name]) == keys, section.name
    assert parse_config(data) == config


@pytest.mark.parametrize(("toml", "key", "words"), [
    ("[objstore]\nworkers = 0", "objstore.workers", "1..64"),
    ("[objstore]\nworkers = 'two'", "objstore.workers", "not a size"),
    ("[objstore]\nmax_item_size = 500", "objstore.max_item_size", "between 1 KiB and 64 MiB"),
    ("[objstore]\nlisten = 'nohost'", "objstore.listen", "host:port"),
    ("[objstore]\nflush_all_enabled = 1", "objstore.flush_all_enabled", "true or false"),
    ("[objstore]\nbogus = 1", "objstore.bogus", "unknown key"),
    ("[nosuch]\nx = 1", "nosuch", "unknown key"),
    ("[director]\nwrite_quorum = 3", "director.write_quorum", "replicas"),
    ("[cluster]\nredis_nodes = []", "cluster.redis_nodes", "at least one"),
    ("[cluster]\npg_dsn = 'mysql://x'", "cluster.pg_dsn", "postgresql://"),
    ("[imapd]\ntls_cert = 'a.pem'", "imapd.tls_key", "together"),
])
def test_errors_name_the_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    """A bad value is reported with its dotted key and what is wrong."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.key == key
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_sizes_and_lists_are_coerced(tmp_path: Path) -> None:
    """Sizes accept unit suffixes and TOML arrays become tuples."""
    path = tmp_path / "c.toml"
    path.write_text('[objstore]\nmax_item_size = "4M"\n[cluster]\nredis_nodes = ["h:1"]\n')
    config = load_config(path, {})
    assert config.objstore.max_item_size == 4 * 1024 * 1024
    assert config.cluster.redis_nodes == ("h:1",)


def test_environment_overrides_connections() -> None:
    """OBJMAIL_PG_DSN and OBJMAIL_REDIS_NODES replace the file's connection settings."""
    config = load_config(None, {"OBJMAIL_PG_DSN": "postgresql://u@db:5432/m",
                                "OBJMAIL_REDIS_NODES": "r1:7000, r2:7000"})
    assert config.cluster.pg_dsn == "postgresql://u@db:5432/m"
    assert config.cluster.redis_nodes == ("r1:7000", "r2:7000")
    with pytest.raises(ConfigError, match="OBJMAIL_REDIS_NODES"):
        load_config(None, {"OBJMAIL_REDIS_NODES": "nohostport"})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    """A missing or malformed file is named in the error."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("[objstore\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, {})


def test_to_toml_roundtrip() -> None:
    """The launcher's rendering of a config parses back to the same config."""
    config = Config()
    assert parse_config(tomllib.loads(to_toml(config))) == config


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096), ("64K", 65536), ("1M", 1 << 20), ("2G", 2 << 30), ("1.5k", 1536),
    ("10 MiB", 10 << 20), (7, 7),
])
def test_parse_size(text: str | int, expected: int) -> None:
    """Byte sizes take binary unit suffixes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "-1", "12Q", "abc"])
def test_parse_size_rejects(text: str) -> None:
    """Nonsense sizes are refused."""
    with pytest.raises(ConfigError):
        parse_size(text)


def test_find_config_path_order(tmp_path: Path) -> None:
    """--config beats $OBJMAIL_CONFIG beats ./objmail.toml beats ./var/objmail.toml."""
    assert find_config_path(None, {}, tmp_path) is None
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "objmail.toml").write_text("")
    assert find_config_path(None, {}, tmp_path) == tmp_path / "var" / "objmail.toml"
    (tmp_path / "objmail.toml").write_text("")
    assert find_config_path(None, {}, tmp_path) == tmp_path / "objmail.toml"
    assert find_config_path(None, {"OBJMAIL_CONFIG": "/e.toml"}, tmp_path) == Path("/e.toml")
    assert find_config_path("/x.toml", {"OBJMAIL_CONFIG": "/e.toml"}, tmp_path) == Path("/x.toml")
