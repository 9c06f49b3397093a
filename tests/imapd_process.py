"""A real imapd process over the real cluster, for the end-to-end tests (the one place
that starts it).

It runs the launcher's imapd spec (:meth:`ops.devcluster.DevCluster.imapd_spec`, what
``objmail dev up`` starts) with a config of its own: over the session's storage cluster
(the conftest ``storage_cluster`` fixture: PostgreSQL, Redis Cluster, registered object
servers) it generates a self-signed certificate, writes a config with free ports, and
runs ``python -m imapd.main`` until the module's tests end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from director.client import BlobClient
from metadata.delivery import Delivered, Deliverer
from metadata.store import MetadataStore
from ops.config import Config, ImapdConfig, to_toml
from ops.launcher import Launcher, ProcessSpec, free_port
from runtime.secrets import load_credentials
from tests.conftest import SessionCluster


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost (openssl from the system)."""
    cert, key = directory / "imapd-cert.pem", directory / "imapd-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,"
                    "IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@dataclass
class Imapd:
    """A running imapd: its ports, config and the launcher that owns it."""

    name: str
    config: Config
    config_path: Path
    launcher: Launcher
    spec: ProcessSpec
    host: str = "127.0.0.1"

    @property
    def imap_port(self) -> int:
        return int(self.config.imapd.imap_listen.rsplit(":", 1)[1])

    @property
    def imaps_port(self) -> int:
        return int(self.config.imapd.imaps_listen.rsplit(":", 1)[1])

    @property
    def lmtp_port(self) -> int:
        return int(self.config.imapd.lmtp_listen.rsplit(":", 1)[1])

    @property
    def pop3_port(self) -> int:
        return int(self.config.imapd.pop3_listen.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.launcher.tail(self.name, 60)

    def stop(self) -> None:
        self.launcher.stop(self.spec)


def start_imapd(tc: SessionCluster, name: str, tls: tuple[Path, Path], **imapd: object) -> Imapd:
    """Run one imapd on free ports against the session's cluster."""
    settings: dict[str, object] = {
        "imap_listen": f"127.0.0.1:{free_port()}",
        "imaps_listen": f"127.0.0.1:{free_port()}",
        "pop3_listen": f"127.0.0.1:{free_port()}",
        "lmtp_listen": "",
        "tls_cert": str(tls[0]),
        "tls_key": str(tls[1]),
        "allow_plaintext_auth": True,
        "login_delay": 0.2,
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "workers": 1,  # one process unless a test asks for more
    }
    settings.update(imapd)
    config = dataclasses.replace(tc.config, imapd=ImapdConfig(**settings))  # type: ignore[arg-type]
    path = tc.run_dir / f"{name}.toml"
    path.write_text(to_toml(config))
    cluster = tc.cluster()
    spec = cluster.imapd_spec(name=name, config=config, config_path=path)
    cluster.launcher.start(spec)
    launcher = cluster.launcher
    return Imapd(name, config, path, launcher, spec)


def imapd_fixtures(name: str) -> tuple[Any, Any, Any, Any]:
    """The module-scoped fixtures of a module that runs one imapd, to be assigned to these
    names (they ask for each other by name)::

        cluster, certificate, imapd, mail = imapd_fixtures("imapd-1")

    ``cluster``: the session's PostgreSQL, Redis Cluster and registered object servers;
    ``certificate``: a self-signed one for localhost; ``imapd``: the process ``name`` over
    both; ``mail``: users and deliveries (:class:`Mail`).
    """

    @pytest.fixture(scope="module")
    def cluster(test_cluster: SessionCluster, storage_cluster: object) -> SessionCluster:
        """The session's PostgreSQL, Redis Cluster and registered object servers."""
        return test_cluster

    @pytest.fixture(scope="module")
    def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
        return self_signed(tmp_path_factory.mktemp("tls"))

    @pytest.fixture(scope="module")
    def imapd(cluster: SessionCluster, certificate: tuple[Path, Path]) -> Iterator[Imapd]:
        server = start_imapd(cluster, name, certificate)
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture(scope="module")
    def mail(cluster: SessionCluster) -> Mail:
        return Mail(cluster.config)

    return cluster, certificate, imapd, mail


class Mail:
    """Users and deliveries for the tests, through the real Deliverer and BlobClient (what
    LMTP does), from the test process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.credentials = load_credentials(config.cluster)

    def create_user(self, name: str, password: str = "secret", *, quota_bytes: int = 0,
                    quota_messages: int = 0) -> None:
        async def create() -> None:
            store = await MetadataStore.open(self.config.cluster.pg_dsn, pool_min=1,
                                             pool_max=2,
                                             password=self.credentials.pg_password)
            try:
                await store.users.create(name, password, quota_bytes=quota_bytes,
                                         quota_messages=quota_messages)
            finally:
                await store.close()

        asyncio.run(create())

    def deliver(self, user: str, messages: Iterable[bytes], mailbox: str = "INBOX",
                ) -> list[Delivered]:
        async def deliver() -> list[Delivered]:
            store = await MetadataStore.open(self.config.cluster.pg_dsn, pool_min=1,
                                             pool_max=2,
                                             password=self.credentials.pg_password)
            blobs = await BlobClient.open(self.config.cluster, self.config.director,
                                          auth=self.credentials.redis)
            try:
                deliverer = Deliverer(store, blobs, self.config.metadata, self.config.imapd.max_message_size)
                return [await deliverer.deliver(user, raw, mailbox=mailbox)
                        for raw in messages]
            finally:
                await blobs.aclose()
                await store.close()

        return asyncio.run(deliver())

    def deliver_many(self, user: str, messages: Iterable[bytes], mailbox: str = "INBOX",
                     batch: int = 50) -> None:
        """Deliver ``messages`` in order, ``batch`` at a time: one blob upload and one
        transaction per batch (Deliverer.upload_many/commit_many), for a test that needs
        thousands of messages in a mailbox quickly."""
        async def deliver() -> None:
            store = await MetadataStore.open(self.config.cluster.pg_dsn, pool_min=1,
                                             pool_max=2,
                                             password=self.credentials.pg_password)
            blobs = await BlobClient.open(self.config.cluster, self.config.director,
                                          auth=self.credentials.redis)
            try:
                deliverer = Deliverer(store, blobs, self.config.metadata,
                                      self.config.imapd.max_message_size)
                account = await store.users.get(user)
                raws = list(messages)
                for start in range(0, len(raws), batch):
                    prepared = [await deliverer.prepare(raw)
                                for raw in raws[start:start + batch]]
                    await deliverer.upload_many(prepared)
                    await deliverer.commit_many(account, [(p, (), None) for p in prepared],
                                                mailbox=mailbox)
            finally:
                await blobs.aclose()
                await store.close()

        asyncio.run(deliver())


def imaps_context() -> ssl.SSLContext:
    """A client context that accepts the test's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
