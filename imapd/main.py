"""``imapd``: the mailbox server process (IMAP, IMAPS, POP3 and LMTP).

``imapd [--config FILE] [--metrics-listen HOST:PORT] [--log-format text|json]
[--log-level LEVEL]``

It runs as every objmail daemon does (:func:`runtime.daemon.run_daemon`): the config is
loaded once, Twisted's asyncio reactor is installed on uvloop's loop
(:mod:`runtime.eventloop`) before anything imports the reactor, and the reactor runs.
With ``[imapd] workers`` above 1 (0, the default, means one per core) the first process
is a supervisor (:func:`runtime.workers.supervise`): it checks that every port is free,
then forks the workers, each of which runs everything below on its own loop and accepts
on the same ports (SO_REUSEPORT), with its metrics on ``metrics_listen``'s port plus its
index.  Sessions in different workers see each other's changes through PostgreSQL's
change feed, as sessions in different imapd processes always have; failed-login counts
live in Redis, so the limits hold across workers.

Once the loop runs, :meth:`MailServer.start` builds the process-wide services in order
(the PostgreSQL pool, the change listener, the blob client, the deliverer) and then opens
every listener of :func:`listeners` and the metrics endpoint.  SIGTERM/SIGINT stop the
reactor; before it stops, :meth:`MailServer.stop` closes the listeners, says BYE to every
connection, and closes the services.  Exit status: 0 after a clean stop, 78 (EX_CONFIG)
for a bad configuration, 69 (EX_UNAVAILABLE) when PostgreSQL or Redis Cluster cannot be
reached at start-up, 71 when a port is taken, 70 for anything else (the log says why).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from director.errors import IndexUnavailable
from imapd.config import ImapdProcessConfig
from metadata.errors import Unavailable
from runtime import logs
from runtime.config import parse_hostport
from runtime.daemon import (
    EX_CONFIG,
    arg_parser,
    load_config,
    replace_section,
    run_daemon,
    run_reactor,
)
from runtime.eventloop import install_asyncio_reactor
from runtime.secrets import Credentials, load_credentials
from runtime.workers import adopt_listener, check_port_free, cpu_count, supervise

__all__ = ["EX_CONFIG", "Listener", "MailServer", "Services", "listeners", "main"]

log = logging.getLogger("imapd")

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
                          LMTPFactory(services.deliverer, services.config.imapd,
                                      metrics=backend.metrics)))
    return [listener for listener in found if listener.address]


class MailServer:
    """The running process: services, ports, and an orderly stop."""

    def __init__(self, config: ImapdProcessConfig, reactor: Any,
                 credentials: Credentials | None = None, *, reuse_port: bool = False) -> None:
        from imapd.metrics import ImapdCollector, ImapMetrics
        from runtime.metrics import new_registry

        self.config = config
        self.reactor = reactor
        self.credentials = credentials or Credentials()
        #: Listen with SO_REUSEPORT: one of several workers on the same ports.
        self.reuse_port = reuse_port
        self.services: Services | None = None
        self.ports: list[Any] = []
        self.factories: list[Any] = []
        self.names: list[str] = []
        #: What the sessions count, exported with the process's other metrics.
        self.metrics = ImapMetrics()
        self.registry = new_registry("imapd")
        self.registry.register(self.metrics)
        self.registry.register(ImapdCollector(
            lambda: list(zip(self.names, self.factories, strict=True)), lambda: self.services))

    async def start(self) -> None:
        """Build the services and listen.

        :raises Unavailable: PostgreSQL cannot be reached (exit 69).
        :raises IndexUnavailable: Redis Cluster cannot be reached (exit 69).
        :raises Exception: anything else that prevents serving (logged by the caller).
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
            password=creds.pg_password, statement_timeout=config.metadata.statement_timeout,
            search_timeout=config.metadata.search_timeout)
        changes = ChangeListener(config.cluster.pg_dsn, keepalive=config.imapd.notify_keepalive,
                                 password=creds.pg_password)
        await changes.start()
        blobs = await BlobClient.open(config.cluster, config.director, auth=creds.redis)
        deliverer = Deliverer(store, blobs, config.metadata, config.imapd.max_message_size)
        logins = login_limiter(config, creds)
        backend = Backend(store, blobs, deliverer, changes, config.imapd, self.reactor,
                          metrics=self.metrics, logins=logins)
        self.services = Services(config, store, blobs, deliverer, changes, backend, tls)
        for listener in listeners(self.services):
            host, port = parse_hostport(listener.address, f"imapd.{listener.name}_listen")
            if self.reuse_port:
                listening = adopt_listener(self.reactor, host, port, listener.factory,
                                           listener.tls)
            elif listener.tls is not None:
                listening = self.reactor.listenSSL(port, listener.factory, listener.tls,
                                                   interface=host)
            else:
                listening = self.reactor.listenTCP(port, listener.factory, interface=host)
            self.ports.append(listening)
            self.factories.append(listener.factory)
            self.names.append(listener.name)
            log.info("%s listening on %s", listener.name, listener.address)
        if config.imapd.metrics_listen:
            from runtime.metrics import listen_metrics

            self.ports.append(listen_metrics(self.reactor, config.imapd.metrics_listen,
                                             "imapd.metrics_listen", self.registry))
            log.info("metrics on http://%s/metrics", config.imapd.metrics_listen)
        log.info("imapd ready (pid %d)", os.getpid())

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
    return arg_parser("imapd", "objmail mailbox server (IMAP4rev1, IMAPS, POP3, LMTP)",
                      metrics_key="imapd.metrics_listen")


def configure(args: argparse.Namespace) -> ImapdProcessConfig:
    """The config file with the command line's overrides.

    :raises ConfigError: a bad file or value, named by its key.
    """
    config = load_config(ImapdProcessConfig, args)
    if args.metrics_listen is not None:
        config = replace_section(config, "imapd", {"metrics_listen": args.metrics_listen})
    return config


def worker_config(config: ImapdProcessConfig, index: int) -> ImapdProcessConfig:
    """Worker ``index``'s config: its metrics on ``metrics_listen``'s port + ``index``."""
    if not config.imapd.metrics_listen or index == 0:
        return config
    host, port = parse_hostport(config.imapd.metrics_listen, "imapd.metrics_listen")
    address = f"[{host}]:{port + index}" if ":" in host else f"{host}:{port + index}"
    return replace_section(config, "imapd", {"metrics_listen": address})


def run_server(config: ImapdProcessConfig, credentials: Credentials, name: str = "imapd",
               *, reuse_port: bool = False) -> int:
    """One serving process on its own reactor, until SIGTERM/SIGINT; its exit status."""
    reactor = install_asyncio_reactor()
    logs.route_twisted()
    server = MailServer(config, reactor, credentials, reuse_port=reuse_port)
    profile_dir = os.environ.get("OBJMAIL_IMAPD_PROFILE")
    if not profile_dir:
        return run_reactor(reactor, name, server.start, server.stop,
                           unavailable=(Unavailable, IndexUnavailable))
    # Benchmarks only (BENCHMARKS.md): cProfile of the whole process, one file per process.
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return run_reactor(reactor, name, server.start, server.stop,
                           unavailable=(Unavailable, IndexUnavailable))
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"imapd-{os.getpid()}.prof"))


def serve(config: ImapdProcessConfig) -> int:
    """Run imapd (one process, or a supervisor and its workers) until SIGTERM/SIGINT;
    the exit status.

    :raises ConfigError: a secret file is missing or not private (78).
    :raises StartError: with several workers, a port is taken (71).
    """
    credentials = load_credentials(config.cluster)
    workers = config.imapd.workers or cpu_count()
    if workers == 1:
        return run_server(config, credentials)
    conf = config.imapd
    for key in ("imap_listen", "imaps_listen", "pop3_listen", "lmtp_listen"):
        if getattr(conf, key) and (key != "imaps_listen" or conf.tls_cert):
            check_port_free(getattr(conf, key), f"imapd.{key}")
    for index in range(workers):
        metrics = worker_config(config, index).imapd.metrics_listen
        if metrics:
            check_port_free(metrics, "imapd.metrics_listen")
    log.info("imapd supervisor (pid %d) starting %d workers", os.getpid(), workers)
    return supervise(workers, lambda index: run_server(
        worker_config(config, index), credentials, f"imapd worker {index}",
        reuse_port=True), log)


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon("imapd", argv, build_arg_parser(), configure, serve)


if __name__ == "__main__":
    sys.exit(main())
