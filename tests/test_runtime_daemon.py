"""The daemon runner: the common options, config overrides and sysexits statuses."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest
from twisted.internet.error import CannotListenError

from director.errors import IndexLayoutMismatch, IndexUnavailable
from metadata.errors import SchemaError
from metadata.errors import Unavailable as MetadataUnavailable
from objstore.config import ObjstoredConfig
from runtime.config import ConfigError
from runtime.daemon import (
    EX_CONFIG,
    EX_OSERR,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    StartError,
    Unavailable,
    arg_parser,
    exit_code,
    load_config,
    replace_section,
)


class DependencyDown(Exception):
    """Stands for a component's own 'cannot reach PostgreSQL' error."""


def test_exit_codes_follow_sysexits() -> None:
    """Config errors exit 78, unreachable dependencies 69 (ours or the daemon's own
    exception), a taken port 71, anything else 70."""
    assert exit_code(ConfigError("objstore.listen", "bad")) == EX_CONFIG
    assert exit_code(Unavailable("Redis")) == EX_UNAVAILABLE
    assert exit_code(DependencyDown(), (DependencyDown,)) == EX_UNAVAILABLE
    assert exit_code(DependencyDown()) == EX_SOFTWARE
    assert exit_code(StartError("objstore.data_dir: in use")) == EX_OSERR
    assert exit_code(CannotListenError("127.0.0.1", 1, OSError(errno.EADDRINUSE, "x"))) \
        == EX_OSERR
    assert exit_code(OSError(errno.EACCES, "denied")) == EX_OSERR
    assert exit_code(KeyError("bug")) == EX_SOFTWARE


def test_errors_of_a_kind_give_their_exit_code() -> None:
    """A component's error of kind misconfigured exits 78 and of kind unavailable 69,
    without the daemon listing its exception classes."""
    assert exit_code(SchemaError("run objmail db migrate")) == EX_CONFIG
    assert exit_code(IndexLayoutMismatch("index_buckets")) == EX_CONFIG
    assert exit_code(IndexUnavailable("Redis Cluster unreachable")) == EX_UNAVAILABLE
    assert exit_code(MetadataUnavailable("PostgreSQL unreachable")) == EX_UNAVAILABLE


def test_common_options_and_overrides_name_the_key(tmp_path: Path) -> None:
    """Every daemon's parser takes --config, --log-format, --log-level and
    --metrics-listen; an override that is invalid is reported under section.key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[objstore]\nzone = "z"\n')
    args = arg_parser("d", "test", metrics_key="objstore.metrics_listen").parse_args(
        ["--config", str(cfg), "--log-format", "json", "--metrics-listen", ""])
    assert (args.log_format, args.log_level, args.metrics_listen) == ("json", "info", "")
    config = load_config(ObjstoredConfig, args)
    assert config.objstore.zone == "z"
    changed = replace_section(config, "objstore", {"metrics_listen": ""})
    assert changed.objstore.metrics_listen == "" and changed.objstore.zone == "z"
    assert replace_section(config, "objstore", {}) is config
    with pytest.raises(ConfigError) as info:
        replace_section(config, "objstore", {"metrics_listen": "nohost"})
    assert info.value.key == "objstore.metrics_listen"
    assert dataclasses.asdict(config.cluster) == dataclasses.asdict(changed.cluster)
    with pytest.raises(SystemExit):
        arg_parser("d", "test", metrics_key="k").parse_args(["--log-format", "xml"])
