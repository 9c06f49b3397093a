"""``imapd``: the mailbox server process (IMAP, IMAPS, POP3 and LMTP).

``imapd [--config FILE]``

``main()`` loads the config once, installs Twisted's asyncio reactor (before anything
imports the reactor), and runs.  Once the loop runs, :meth:`MailServer.start` builds the
process-wide services in order (the PostgreSQL pool, the change listener, the blob client,
the deliverer) and then opens every listener of :func:`listeners`.  SIGTERM/SIGINT stop the
reactor; before it stops, :meth:`MailServer.stop` closes the listeners, says BYE to every
connection, and closes the services.  Exit status: 0 after a clean stop, 1 when start-up
failed (the log says why), 78 (EX_CONFIG) for a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapd.config import ImapdProcessConfig
from runtime.config import ConfigError, find_config_path, load, parse_hostport
from runtime.eventloop import new_event_loop
from runtime.secrets import Credentials, load_credentials

__all__ = ["EX_CONFIG", "Listener", "MailServer", "Services", "listeners", "main"]

log = logging.getLogger("imapd")

EX_CONFIG = 78
#: Seconds given to running commands to finish at shutdown.
SHUTDOWN_GRACE = 2.0
#: Seconds a login waits for Redis to check its failure counts before skipping them.
LOGIN_LIMIT_DEADLINE = 2.0


@dataclass(frozen=True)
class Listener:
    """One listening port: a name for logs, ``host:port``, the factory, and the TLS
    context when the port speaks TLS from the first byte (IMAPS)."""

    name: str
    address: str
    factory: Any
    tls: Any = None


@dataclass(frozen=True)
class Services:
    """What the listeners share, built once the loop runs."""

    config: ImapdProcessConfig
    store: Any
    blobs: Any
    deliverer: Any
    changes: Any
    backend: Any
    tls: Any


def listeners(services: Services) -> list[Listener]:
    """Every port this process serves; a listener with an empty address is off."""
    from imapd.lmtp import LMTPFactory
    from imapd.pop3server import Pop3Factory
    from imapd.server import IMAPFactory

    conf = services.config.imapd
    backend = services.backend
    tls = services.tls
    found = [
        Listener("imap", conf.imap_listen, IMAPFactory(backend, tls=tls)),
        Listener("pop3", conf.pop3_listen, Pop3Factory(backend, tls=tls)),
    ]
    if tls is not None:
        found.append(Listener("imaps", conf.imaps_listen,
                              IMAPFactory(backend, tls=tls, secure=True), tls))
    found.append(Listener("lmtp", conf.lmtp_listen,
                          LMTPFactory(services.deliverer, services.config.imapd)))
    return [listener for listener in found if listener.address]


class MailServer:
    """The running process: services, ports, and an orderly stop."""

    def __init__(self, config: ImapdProcessConfig, reactor: Any,
                 credentials: Credentials | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.credentials = credentials or Credentials()
        self.services: Services | None = None
        self.ports: list[Any] = []
        self.factories: list[Any] = []
        self.exit_code = 0

    async def start(self) -> None:
        """Build the services and listen.

        :raises Exception: anything that prevents serving (logged by the caller).
        """
        from director.client import BlobClient
        from imapd.backend import Backend
        from imapd.tls import server_context
        from metadata.delivery import Deliverer
        from metadata.notify import ChangeListener
        from metadata.passwords import VerifiedLogins
        from metadata.store import MetadataStore

        config, creds = self.config, self.credentials
        tls = server_context(config.imapd)
        store = await MetadataStore.open(
            config.cluster.pg_dsn, pool_min=config.metadata.pool_min,
            pool_max=config.metadata.pool_max,
            verified=VerifiedLogins(ttl=config.metadata.login_cache_ttl),
            password=creds.pg_password)
        changes = ChangeListener(config.cluster.pg_dsn, keepalive=config.imapd.notify_keepalive,
                                 password=creds.pg_password)
        await changes.start()
        blobs = await BlobClient.open(config.cluster, config.director, auth=creds.redis)
        deliverer = Deliverer(store, blobs, config.metadata, config.imapd.max_message_size)
        logins = login_limiter(config, creds)
        backend = Backend(store, blobs, deliverer, changes, config.imapd, self.reactor,
                          logins=logins)
        self.services = Services(config, store, blobs, deliverer, changes, backend, tls)
        names: list[str] = []
        for listener in listeners(self.services):
            host, port = parse_hostport(listener.address, f"imapd.{listener.name}_listen")
            if listener.tls is not None:
                listening = self.reactor.listenSSL(port, listener.factory, listener.tls,
                                                   interface=host)
            else:
                listening = self.reactor.listenTCP(port, listener.factory, interface=host)
            self.ports.append(listening)
            self.factories.append(listener.factory)
            names.append(listener.name)
            log.info("%s listening on %s", listener.name, listener.address)
        if config.imapd.metrics_listen:
            self._serve_metrics(backend, changes, blobs, names)
        log.info("imapd ready (pid %d)", os.getpid())

    def _serve_metrics(self, backend: Any, changes: Any, blobs: Any, names: list[str]) -> None:
        from twisted.web.server import Site

        from director.metrics import MetricsResource, Sample

        factories = list(zip(names, self.factories, strict=True))

        def samples() -> list[Sample]:
            out = [Sample("imapd_open_connections", "gauge", "Open client connections.",
                          float(getattr(f, "open_connections", 0)), (("listener", name),))
                   for name, f in factories]
            out.append(Sample("imapd_change_listener_reconnects_total", "counter",
                              "Times the LISTEN connection to PostgreSQL was re-established.",
                              float(changes.reconnects)))
            stats = getattr(blobs, "stats", None)
            for attr in ("gets", "failovers", "bad_replicas"):
                if stats is not None and hasattr(stats, attr):
                    out.append(Sample(f"imapd_blob_{attr}_total", "counter",
                                      f"Blob client {attr.replace('_', ' ')}.",
                                      float(getattr(stats, attr))))
            return out

        host, port = parse_hostport(self.config.imapd.metrics_listen, "imapd.metrics_listen")
        site = Site(MetricsResource(lambda: backend.metrics.render(samples())))
        self.ports.append(self.reactor.listenTCP(port, site, interface=host))
        log.info("metrics on http://%s/metrics", self.config.imapd.metrics_listen)

    async def stop(self) -> None:
        """Stop listening, end every connection, close the services."""
        loop = asyncio.get_running_loop()
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:  # a Deferred: bridge it, asyncio cannot await it
                await stopped.asFuture(loop)
        self.ports.clear()
        for factory in self.factories:
            shutdown = getattr(factory, "shutdown", None)
            if shutdown is not None:
                shutdown()
        if self.factories:
            deadline = loop.time() + SHUTDOWN_GRACE
            while any(getattr(f, "open_connections", 0) for f in self.factories):
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
        services, self.services = self.services, None
        if services is None:
            return
        closings = [services.changes.close, services.blobs.aclose, services.store.close]
        aclose = getattr(services.backend.logins, "aclose", None)
        if aclose is not None:
            closings.append(aclose)
        for closing in closings:
            try:
                await closing()
            except Exception:
                log.exception("error while closing %s", closing)
        log.info("imapd stopped")


def login_limiter(config: ImapdProcessConfig, credentials: Credentials) -> Any:
    """The failed-login limiter every process shares through Redis, or none when both
    limits are 0.  It has its own Redis client with a short retry deadline: a login
    waits at most that long for Redis (then the limit is skipped, see imapd.logins)."""
    from director.redisconn import ClusterRunner, RetryPolicy, new_cluster_client
    from imapd.logins import NoLoginLimit, RedisLoginLimiter

    conf = config.imapd
    if not conf.login_fail_limit and not conf.login_fail_limit_ip:
        return NoLoginLimit()
    runner = ClusterRunner(new_cluster_client(config.cluster.redis_nodes,
                                              auth=credentials.redis),
                           retry=RetryPolicy(deadline=LOGIN_LIMIT_DEADLINE), wait_replicas=0)
    return RedisLoginLimiter(runner, config.cluster.redis_prefix,
                             user_limit=conf.login_fail_limit,
                             address_limit=conf.login_fail_limit_ip,
                             window=conf.login_fail_window)


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imapd", description="objmail mailbox server "
                                 "(IMAP4rev1, IMAPS, POP3)")
    ap.add_argument("--config", help="objmail.toml (default: $OBJMAIL_CONFIG, ./objmail.toml, "
                    "./var/objmail.toml)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load(ImapdProcessConfig, find_config_path(args.config, os.environ, Path.cwd()),
                             os.environ)
        credentials = load_credentials(config.cluster)
    except ConfigError as exc:
        print(f"imapd: {exc}", file=sys.stderr)
        return EX_CONFIG

    from twisted.internet import asyncioreactor

    loop = new_event_loop()
    asyncioreactor.install(loop)
    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    server = MailServer(config, reactor, credentials)

    def started_failed(reason: Any) -> None:
        if reason.check(ConfigError):
            log.error("%s", reason.value)
            server.exit_code = EX_CONFIG
        else:
            log.error("imapd could not start: %s", reason.getTraceback())
            server.exit_code = 1
        reactor.stop()

    def start() -> None:
        d = defer.Deferred.fromFuture(asyncio.ensure_future(server.start()))
        d.addErrback(started_failed)

    def stop() -> Any:
        d = defer.Deferred.fromFuture(asyncio.ensure_future(server.stop()))
        d.addErrback(lambda reason: log.error("unclean stop: %s", reason.getTraceback()))
        return d

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
