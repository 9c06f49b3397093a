"""``directord``: the memcached-protocol proxy in front of the object servers.

``directord [--config FILE] [--listen HOST:PORT] [--workers N] [--metrics-listen HOST:PORT]
[--log-format text|json] [--log-level LEVEL]``

It runs as every objmail daemon does (:func:`runtime.daemon.run_daemon`): exit status 78
for a bad configuration, 69 when Redis Cluster cannot be reached at start-up, 71 when a
port is taken.  Twisted runs on the asyncio reactor (:mod:`runtime.eventloop`: uvloop's
loop), so the asyncio blob client (redis-py's asyncio cluster client, the pipelined
object-server connections) shares the reactor's loop; :mod:`director.proxy` bridges the
two with ``Deferred.fromFuture``.  :meth:`Directord.start` opens the client (Redis Cluster
reached, index layout checked) before the port, so a directord that answers ``version``
can serve.  The objstored protocol adapter serves the connections, with directord's own
limits (``director.max_connections``, ``max_line``, ``max_pipeline``, ``idle_timeout``,
``slow_reader_timeout``, ``max_item_size``), and its own access rules: memcached's
authentication with ``director.auth_file``, TLS with ``tls_cert``/``tls_key``/``tls_ca``.
What directord needs to reach the object servers (``director.objstore_auth_file``,
``objstore_tls_*``) is read in :func:`serve` too, with the auth and TLS files: a missing
or malformed one exits 78 before anything starts.

With ``director.workers`` (``--workers``) above 1 (0 means one per core) the first process
is a supervisor (:func:`runtime.workers.supervise`), as objstored's and imapd's: it reads
the secret, auth and TLS files, checks that the port and every worker's metrics port are
free, then forks the workers.  Each worker is a whole directord on its own loop (its blob
client, cache, cas clock and counters) accepting on the same port (SO_REUSEPORT), its
metrics on ``metrics_listen``'s port plus its index; only worker 0 runs the background
jobs (their leases would keep the others waiting anyway).  Workers share nothing but the
port and the ``flush_all`` cut-off (:class:`director.flushboard.FlushBoard`): several
directords are supported by design (docs/director.md, "Workers").

SIGTERM (or SIGINT) stops accepting, lets every connection finish the replies it owes
(5 s at most), stops the background jobs, closes the client and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from director.config import DirectordConfig
from director.errors import IndexUnavailable
from director.flushboard import FlushBoard
from runtime import logs
from runtime.config import parse_hostport
from runtime.daemon import arg_parser, load_config, replace_section, run_daemon, run_reactor
from runtime.eventloop import install_asyncio_reactor
from runtime.metrics import JobMetrics
from runtime.secrets import NO_REDIS_AUTH, RedisAuth, load_credentials
from runtime.workers import adopt_listener, check_port_free, cpu_count, supervise

if TYPE_CHECKING:
    from director.memcache_client import NodeAccess
    from objstore.server import Security

log = logging.getLogger("directord")

#: Seconds connections get to finish their replies at shutdown.
DRAIN_TIMEOUT: Final = 5.0


def build_arg_parser() -> argparse.ArgumentParser:
    ap = arg_parser("directord", "objmail director: a memcached-protocol proxy that places, "
                                 "replicates and finds blobs",
                    metrics_key="director.metrics_listen")
    ap.add_argument("--listen", help="host:port to serve memcached clients on "
                                     "(default: director.listen)")
    ap.add_argument("--workers", type=int, help="processes sharing the port, 0 = one per "
                                                "core (default: director.workers)")
    return ap


def configure(args: argparse.Namespace) -> DirectordConfig:
    """The config file's settings with the command line's overrides.

    :raises ConfigError: a bad file or value, named by its key.
    """
    config = load_config(DirectordConfig, args)
    changes = {key: value for key, value in (("listen", args.listen),
                                             ("metrics_listen", args.metrics_listen),
                                             ("workers", args.workers))
               if value is not None}
    return replace_section(config, "director", changes)


def start_background(client: Any, clock: Any, jobs: JobMetrics | None = None) -> list[Any]:
    """Start the background jobs whose interval is set (repair, drain, level, tier), each on
    a LoopingCall of ``clock``; returns their loops (:class:`director.background.Loop`).

    :param jobs: where the jobs' metrics go (``directord_job_*{job=...}``).
    """
    from director.background import Loop
    from director.drainer import drain_all
    from director.leveler import Leveler
    from director.repairer import Repairer
    from director.tiering import Tierer

    dconf = client.dconf
    loops: list[Loop] = []
    if dconf.repair_interval:
        loops.append(Repairer(client).run_forever(clock, dconf.repair_interval, jobs))
    if dconf.level_interval:
        loops.append(Leveler(client).run_forever(clock, dconf.level_interval, jobs))
    if dconf.tier_interval and client.policy.tiers is not None:
        loops.append(Tierer(client).run_forever(clock, dconf.tier_interval, jobs))
    if dconf.drain_interval:
        recorder = jobs.job("drain") if jobs is not None else None
        progress = recorder.progress if recorder is not None else None

        async def drain() -> None:
            await drain_all(client, progress=progress)

        loop = Loop(clock, dconf.drain_interval, "drain", drain, recorder)
        loop.start()
        loops.append(loop)
    return loops


class Directord:
    """The running proxy: the blob client, the ports, the background jobs.

    :param auth: Redis credentials (``runtime.secrets.load_credentials``).
    :param security: who may use directord's port (None: anyone, in plaintext).
    :param access: how to reach the object servers (None: read from the config).
    :param index: this worker's index (0 runs the background jobs).
    :param reuse_port: listen with SO_REUSEPORT: one of several workers on the port.
    :param flush_board: the ``flush_all`` cut-off the workers share (None: one process).
    """

    def __init__(self, config: DirectordConfig, reactor: Any,
                 auth: RedisAuth = NO_REDIS_AUTH, security: Security | None = None,
                 access: NodeAccess | None = None, *, index: int = 0,
                 reuse_port: bool = False, flush_board: FlushBoard | None = None) -> None:
        from director.metrics import DirectordCollector, ProxyMetrics
        from objstore.stats import Counters
        from runtime.metrics import new_registry

        self.config = config
        self.reactor = reactor
        self.auth = auth
        self.security = security
        self.access = access
        self.index = index
        self.reuse_port = reuse_port
        self.flush_board = flush_board
        self.client: Any = None
        self.factory: Any = None
        self.ports: list[Any] = []
        self.loops: list[Any] = []
        self.metrics = ProxyMetrics()
        self.counters = Counters()
        self.registry = new_registry("directord")
        self.registry.register(DirectordCollector(
            self.metrics, lambda: self.counters.curr_connections, lambda: self.client))
        self.jobs = JobMetrics(self.registry, "directord", reactor.seconds)

    async def start(self) -> None:
        """Open the blob client, then the ports, then start the background jobs.

        :raises IndexUnavailable: Redis Cluster cannot be reached (exit 69).
        :raises KeyringError: no keyring (without ``allow_plaintext``), or one that is
            missing, unsafe or not the installation's (exit 78).
        :raises CannotListenError: a port is taken (exit 71).
        """
        from director.client import BlobClient
        from director.proxy import ProxyHandler
        from objstore.server import OPEN, ObjstoreFactory
        from runtime.metrics import listen_metrics

        config, dconf, r = self.config, self.config.director, self.reactor
        security = self.security or OPEN
        self.client = await BlobClient.open(config.cluster, dconf, auth=self.auth,
                                            access=self.access, flush_board=self.flush_board)
        if dconf.location_cache_entries:
            if self.auth.tls:
                log.warning("director.location_cache_entries is ignored: the invalidation "
                            "connections do not speak TLS (cluster.redis_tls)")
            else:
                await self.client.start_location_cache(dconf.location_cache_entries,
                                                       config.cluster, self.auth)
        handler = ProxyHandler(self.client, self.metrics, cache_bytes=dconf.cache_bytes,
                               config=dconf, counters=self.counters)
        # The same protocol adapter as objstored's, with directord's own limits.
        self.factory = ObjstoreFactory(handler, dconf, self.counters, r, auth=security.auth)
        handler.connections = self.factory.describe_connections
        # A batch of reads completes many connections' answers at once: each
        # connection's replies leave in one write.
        self.client.item_reads.delivery = self.factory.replies_together
        host, port = parse_hostport(dconf.listen, "director.listen")
        if self.reuse_port:
            self.ports.append(adopt_listener(r, host, port, self.factory, security.tls))
        elif security.tls is not None:
            self.ports.append(r.listenSSL(port, self.factory, security.tls, interface=host,
                                          backlog=1024))
        else:
            self.ports.append(r.listenTCP(port, self.factory, interface=host, backlog=1024))
        if dconf.metrics_listen:
            self.ports.append(listen_metrics(r, dconf.metrics_listen, "director.metrics_listen",
                                             self.registry))
        if self.index == 0:
            self.loops = start_background(self.client, r, self.jobs)
        log.info("directord %s(pid %d) serving memcached clients on %s%s%s, metrics on %s; "
                 "Redis prefix %r", f"worker {self.index} " if self.reuse_port else "",
                 os.getpid(), dconf.listen,
                 " over TLS" if security.tls is not None else "",
                 " (authenticated)" if security.auth is not None else "",
                 dconf.metrics_listen or "-", config.cluster.redis_prefix)

    async def stop(self) -> None:
        """Stop accepting, finish the replies owed, stop the jobs, close the client."""
        loop = asyncio.get_running_loop()
        log.info("directord stopping: no new connections, finishing replies")
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped.asFuture(loop)
        self.ports.clear()
        if self.factory is not None:
            await self.factory.close_all(timeout=DRAIN_TIMEOUT).asFuture(loop)
        # A pass in progress is cancelled; its lease is released on the way out.
        await asyncio.gather(*(job.stop() for job in self.loops))
        if self.client is not None:
            await self.client.aclose()


#: glibc's M_MMAP_THRESHOLD (mallopt), and the size from which allocations get their own
#: mapping.
_M_MMAP_THRESHOLD: Final = -3
_MMAP_FROM: Final = 256 * 1024


def _return_big_buffers() -> None:
    """Make glibc map every allocation of 256 KiB or more on its own, so the big values a
    burst of gets brought through go back to the system when freed.  (glibc's default
    threshold rises to 32 MiB after the first such free, and the heap then keeps freed
    item buffers for good.)  Nothing happens on another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM)
    except (OSError, AttributeError):
        pass


def worker_config(config: DirectordConfig, index: int) -> DirectordConfig:
    """Worker ``index``'s config: its metrics on ``metrics_listen``'s port + ``index``."""
    if not config.director.metrics_listen or index == 0:
        return config
    host, port = parse_hostport(config.director.metrics_listen, "director.metrics_listen")
    address = f"[{host}]:{port + index}" if ":" in host else f"{host}:{port + index}"
    return replace_section(config, "director", {"metrics_listen": address})


def run_server(config: DirectordConfig, auth: RedisAuth, security: Security,
               access: NodeAccess, *, index: int = 0, reuse_port: bool = False,
               flush_board: FlushBoard | None = None) -> int:
    """One serving process on its own reactor, until SIGTERM/SIGINT; its exit status."""
    reactor = install_asyncio_reactor()
    logs.route_twisted()
    server = Directord(config, reactor, auth, security, access, index=index,
                       reuse_port=reuse_port, flush_board=flush_board)
    name = f"directord worker {index}" if reuse_port else "directord"
    code = run_reactor(reactor, name, server.start, server.stop,
                       unavailable=(IndexUnavailable,))
    log.info("%s stopped", name)
    return code


def serve(config: DirectordConfig) -> int:
    """Run directord (one process, or a supervisor and its workers) until SIGTERM/SIGINT;
    returns the exit status.

    :raises ConfigError: a secret, auth or TLS file is missing, malformed or (a secret)
        not private (78).
    :raises StartError: with several workers, a port is taken (71).
    """
    from director.memcache_client import NodeAccess
    from objstore.server import Security

    # Read once, before forking: every worker gets them, none reads the files again.
    auth = load_credentials(config.cluster).redis
    security = Security.load("director", config.director)
    access = NodeAccess.load(config.director)
    _return_big_buffers()
    workers = config.director.workers or cpu_count()
    if workers == 1:
        return run_server(config, auth, security, access)
    check_port_free(config.director.listen, "director.listen")
    for index in range(workers):
        metrics = worker_config(config, index).director.metrics_listen
        if metrics:
            check_port_free(metrics, "director.metrics_listen")
    # Made before the fork, so every worker (a replacement too) maps the same page.
    board = FlushBoard()
    log.info("directord supervisor (pid %d) starting %d workers", os.getpid(), workers)
    return supervise(workers, lambda index: run_server(
        worker_config(config, index), auth, security, access, index=index,
        reuse_port=True, flush_board=board), log)


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon("directord", argv, build_arg_parser(), configure, serve)


if __name__ == "__main__":
    sys.exit(main())
