"""The whole config file, as the ``objmail`` command and the dev launcher see it.

Each section lives with its component (``runtime.config`` holds the loading rules and
``[cluster]``); this module puts them together and re-exports them, so that operators'
tools validate every section at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from director.config import DirectorConfig
from imapd.config import ImapdConfig
from metadata.config import MetadataConfig
from objstore.config import ObjstoreConfig
from runtime.config import (
    ENV_CONFIG,
    ENV_PG_DSN,
    ENV_REDIS_NODES,
    GIB,
    KIB,
    MIB,
    ClusterConfig,
    ConfigError,
    find_config_path,
    load,
    parse_hostport,
    parse_size,
    to_toml,
)
from runtime.config import parse_config as parse_sections

__all__ = [
    "ENV_CONFIG", "ENV_PG_DSN", "ENV_REDIS_NODES", "GIB", "KIB", "MIB", "ClusterConfig",
    "Config", "ConfigError", "DirectorConfig", "ImapdConfig", "MetadataConfig",
    "ObjstoreConfig", "find_config_path", "load_config", "parse_config", "parse_hostport",
    "parse_size", "to_toml",
]


@dataclass(frozen=True)
class Config:
    """The whole file."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    objstore: ObjstoreConfig = field(default_factory=ObjstoreConfig)
    director: DirectorConfig = field(default_factory=DirectorConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    imapd: ImapdConfig = field(default_factory=ImapdConfig)

    def __post_init__(self) -> None:
        # The director cuts blobs into chunks the object servers accept.
        if self.director.object_max_item_size > self.objstore.max_item_size:
            raise ConfigError("director.object_max_item_size",
                              f"{self.director.object_max_item_size} exceeds "
                              f"objstore.max_item_size ({self.objstore.max_item_size})")


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build the whole :class:`Config` from parsed TOML, then apply the environment."""
    return parse_sections(Config, data, environ)


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the whole file (defaults when ``path`` is None) and apply the environment."""
    return load(Config, path, environ)
