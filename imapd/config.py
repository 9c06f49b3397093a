"""imapd's config: the ``[imapd]`` section, and the sections imapd reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from director.config import DirectorConfig
from metadata.config import MetadataConfig
from runtime.config import KIB, MIB, ClusterConfig, check, parse_hostport

#: The values of ``imapd.tls_min_version``.
TLS_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class ImapdConfig:
    """The mailbox server: IMAP, IMAPS, POP3 and LMTP listeners."""

    imap_listen: str = "127.0.0.1:1143"
    imaps_listen: str = "127.0.0.1:1993"
    pop3_listen: str = "127.0.0.1:1110"
    lmtp_listen: str = "127.0.0.1:2424"
    tls_cert: str = ""
    tls_key: str = ""
    #: Oldest TLS version accepted: "1.2" (forward-secret AEAD suites only) or "1.3".
    tls_min_version: str = "1.2"
    allow_plaintext_auth: bool = False
    max_line: int = 64 * KIB
    max_literal: int = 64 * MIB
    max_message_size: int = 64 * MIB
    idle_timeout: float = 1800.0
    prelogin_timeout: float = 60.0
    login_delay: float = 1.0
    #: Failed logins per account, per client address (IPv6: per /64), in a sliding
    #: window, before further attempts are refused; 0 = no limit.
    login_fail_limit: int = 10
    login_fail_limit_ip: int = 50
    login_fail_window: float = 600.0
    max_connections: int = 4096
    max_connections_per_address: int = 100
    pop3_idle_timeout: float = 600.0
    notify_keepalive: float = 30.0
    metrics_listen: str = "127.0.0.1:9102"
    #: Processes sharing the ports (SO_REUSEPORT); 0 = one per core this process may use.
    #: Worker i serves its metrics on metrics_listen's port + i.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.metrics_listen:
            parse_hostport(self.metrics_listen, "metrics_listen")
        check(self.max_connections >= 1, "max_connections", "must be at least 1")
        check(self.max_connections_per_address >= 0, "max_connections_per_address",
              "must be 0 (no limit) or positive")
        check(self.prelogin_timeout >= 0, "prelogin_timeout", "must be 0 (off) or positive")
        check(self.pop3_idle_timeout >= 0, "pop3_idle_timeout", "must be 0 (off) or positive")
        check(self.notify_keepalive > 0, "notify_keepalive", "must be positive")
        check(0 <= self.workers <= 64, "workers", f"must be 0 (one per core) to 64, got {self.workers}")
        for key in ("imap_listen", "imaps_listen", "pop3_listen", "lmtp_listen"):
            value = getattr(self, key)
            if value:
                parse_hostport(value, key)
        check(bool(self.tls_cert) == bool(self.tls_key), "tls_key",
               "tls_cert and tls_key must be set together")
        check(self.max_line >= 1024, "max_line", "must be at least 1024")
        check(self.tls_min_version in TLS_VERSIONS, "tls_min_version",
              f"must be one of {', '.join(TLS_VERSIONS)}, got {self.tls_min_version!r}")
        check(self.login_fail_limit >= 0, "login_fail_limit", "must be 0 (off) or positive")
        check(self.login_fail_limit_ip >= 0, "login_fail_limit_ip",
              "must be 0 (off) or positive")
        check(self.login_fail_window > 0, "login_fail_window", "must be positive")

@dataclass(frozen=True)
class ImapdProcessConfig:
    """What imapd reads of the file: its own section and those of the layers it drives."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    director: DirectorConfig = field(default_factory=DirectorConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    imapd: ImapdConfig = field(default_factory=ImapdConfig)
