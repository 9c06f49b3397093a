"""The metadata layer's config: the ``[metadata]`` section."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import KIB, check


@dataclass(frozen=True)
class MetadataConfig:
    """PostgreSQL access and message splitting."""

    split_threshold: int = 4 * KIB
    pool_min: int = 2
    pool_max: int = 10
    login_cache_ttl: float = 300.0
    #: Seconds PostgreSQL lets one statement of imapd run, and a substring SEARCH (0: no
    #: limit): one user's runaway command must not pin a backend for minutes.
    statement_timeout: float = 10.0
    search_timeout: float = 30.0

    def __post_init__(self) -> None:
        check(self.split_threshold >= 64, "split_threshold", "must be at least 64 bytes")
        check(1 <= self.pool_min <= self.pool_max, "pool_min", "must be 1..pool_max")
        check(0 <= self.login_cache_ttl <= 86400, "login_cache_ttl",
              "must be 0 (off) to 86400 seconds")
        for name in ("statement_timeout", "search_timeout"):
            check(0 <= getattr(self, name) <= 86400, name, "must be 0 (off) to 86400 seconds")
