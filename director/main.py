"""``directord``: the memcached-protocol proxy in front of the object servers.

``directord [--config FILE] [--listen HOST:PORT] [--metrics-listen HOST:PORT]``

Twisted runs on the asyncio reactor, so the asyncio blob client (redis-py's asyncio
cluster client, the pipelined object-server connections) shares the reactor's loop;
:mod:`director.proxy` bridges the two with ``Deferred.fromFuture``.  The client is opened
(Redis Cluster reached, index layout checked) before the port is, so a directord that
answers ``version`` can serve.  The objstored protocol adapter serves the connections,
with objstored's connection limits (``objstore.max_connections``, ``max_line``,
``max_pipeline``, ``idle_timeout``, ``slow_reader_timeout``) and its item size: a value
larger than an object server takes is refused as memcached refuses it.

SIGTERM (or SIGINT) stops accepting, lets every connection finish the replies it owes
(5 s at most), closes the client and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from director.config import DirectordConfig
from runtime.config import ConfigError, find_config_path, load, parse_hostport
from runtime.eventloop import new_event_loop
from runtime.secrets import NO_REDIS_AUTH, RedisAuth, load_credentials

log = logging.getLogger("directord")

#: Seconds connections get to finish their replies at shutdown.
DRAIN_TIMEOUT: Final = 5.0
#: Exit status when Redis Cluster or a port cannot be had at startup.
EXIT_START_FAILED: Final = 1


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="directord",
                                 description="objmail director: a memcached-protocol proxy "
                                             "that places, replicates and finds blobs")
    ap.add_argument("--config", help="objmail.toml (default: $OBJMAIL_CONFIG, ./objmail.toml, "
                                     "./var/objmail.toml)")
    ap.add_argument("--listen", help="host:port to serve memcached clients on "
                                     "(default: director.listen)")
    ap.add_argument("--metrics-listen",
                    help="host:port of the Prometheus endpoint, '' for none "
                         "(default: director.metrics_listen)")
    return ap


def config_from_args(args: argparse.Namespace) -> DirectordConfig:
    """The config file's settings with the command line's overrides.

    :raises ConfigError: a bad file or value, named by its key.
    """
    path = find_config_path(args.config, os.environ, Path.cwd())
    config = load(DirectordConfig, path, os.environ)
    changes: dict[str, Any] = {}
    if args.listen is not None:
        changes["listen"] = args.listen
    if args.metrics_listen is not None:
        changes["metrics_listen"] = args.metrics_listen
    try:
        director = dataclasses.replace(config.director, **changes)
    except ConfigError as exc:
        raise ConfigError(f"director.{exc.key}", exc.message) from None
    return dataclasses.replace(config, director=director)


def start_background(client: Any, clock: Any) -> list[Any]:
    """Start the background jobs whose interval is set (repair, drain, level), each on
    a LoopingCall of ``clock``; returns their loops (:class:`director.background.Loop`)."""
    from director.background import Loop
    from director.drainer import drain_all
    from director.leveler import Leveler
    from director.repairer import Repairer

    dconf = client.dconf
    loops: list[Loop] = []
    if dconf.repair_interval:
        loops.append(Repairer(client).run_forever(clock, dconf.repair_interval))
    if dconf.level_interval:
        loops.append(Leveler(client).run_forever(clock, dconf.level_interval))
    if dconf.drain_interval:
        loop = Loop(clock, dconf.drain_interval, "drain", lambda: drain_all(client))
        loop.start()
        loops.append(loop)
    return loops


def serve(config: DirectordConfig, auth: RedisAuth = NO_REDIS_AUTH) -> int:
    """Run directord until SIGTERM/SIGINT; returns the exit status.

    :param auth: Redis credentials (``runtime.secrets.load_credentials``).
    """
    loop = new_event_loop()
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import defer, reactor
    from twisted.logger import STDLibLogObserver, globalLogBeginner
    from twisted.web.server import Site

    from director.client import BlobClient
    from director.metrics import MetricsResource, ProxyMetrics, Sample
    from director.proxy import ProxyHandler
    from objstore.server import ObjstoreFactory
    from objstore.stats import Counters

    globalLogBeginner.beginLoggingTo([STDLibLogObserver()],  # type: ignore[list-item]
                                   redirectStandardIO=False)
    r: Any = reactor
    dconf = config.director
    status = [0]
    ports: list[Any] = []
    metrics = ProxyMetrics()
    counters = Counters()
    state: dict[str, Any] = {}

    def extra_samples() -> Iterator[Sample]:
        client: BlobClient | None = state.get("client")
        yield Sample("directord_connections", "gauge", "Open client connections.",
                     counters.curr_connections)
        if client is None:
            return
        st = client.stats
        for name, value, text in (
                ("failovers", st.failovers, "Reads that moved on to the next replica."),
                ("bad_replicas", st.bad_replicas, "Replicas that returned corrupt bytes."),
                ("repairs_queued", st.repairs_queued, "Blobs queued for re-replication."),
                ("item_puts", st.item_puts, "Items written to object servers."),
                ("item_gets", st.item_gets, "Item keys looked up.")):
            yield Sample(f"directord_{name}_total", "counter", text, value)
        yield Sample("directord_index_retries_total", "counter",
                     "Redis Cluster batches retried (failover, timeouts).",
                     client.index.runner.stats.retries)
        for node_id, count in sorted(st.by_node_errors.items()):
            yield Sample("directord_object_server_errors_total", "counter",
                         "Failed requests to an object server, by node.", count,
                         (("node", node_id),))

    def start() -> defer.Deferred[Any]:
        d = defer.Deferred.fromFuture(asyncio.ensure_future(
            BlobClient.open(config.cluster, config.director, auth=auth)))
        d.addCallback(listen)
        d.addErrback(failed_to_start)
        return d

    def listen(client: BlobClient) -> None:
        state["client"] = client
        handler = ProxyHandler(client, metrics, cache_bytes=dconf.cache_bytes)
        # The same protocol adapter as objstored's, with directord's own limits.
        factory = ObjstoreFactory(handler, dconf, counters, r)
        state["factory"] = factory
        host, port = parse_hostport(dconf.listen, "director.listen")
        ports.append(r.listenTCP(port, factory, interface=host, backlog=1024))
        if dconf.metrics_listen:
            mhost, mport = parse_hostport(dconf.metrics_listen, "director.metrics_listen")
            site = Site(MetricsResource(lambda: metrics.render(extra_samples())))
            ports.append(r.listenTCP(mport, site, interface=mhost))
        state["loops"] = start_background(client, r)
        log.info("directord (pid %d) serving memcached clients on %s, metrics on %s; "
                 "Redis prefix %r", os.getpid(), dconf.listen, dconf.metrics_listen or "-",
                 config.cluster.redis_prefix)

    def failed_to_start(reason: Any) -> None:
        log.error("directord cannot start: %s", reason.getErrorMessage())
        status[0] = EXIT_START_FAILED
        r.stop()

    def shutdown() -> defer.Deferred[None]:
        log.info("directord stopping: no new connections, finishing replies")
        d: defer.Deferred[Any] = defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in ports])
        factory = state.get("factory")
        if factory is not None:
            d.addCallback(lambda _: factory.close_all(timeout=DRAIN_TIMEOUT))
        loops = state.get("loops") or []
        if loops:
            # A pass in progress is cancelled; its lease is released on the way out.
            d.addCallback(lambda _: defer.Deferred.fromFuture(asyncio.ensure_future(
                asyncio.gather(*(loop.stop() for loop in loops)))))
        client = state.get("client")
        if client is not None:
            d.addCallback(lambda _: defer.Deferred.fromFuture(
                asyncio.ensure_future(client.aclose())))
        d.addErrback(lambda f: log.error("shutdown: %s", f.getErrorMessage()))
        return d

    r.callWhenRunning(start)
    r.addSystemEventTrigger("before", "shutdown", shutdown)
    r.run()
    log.info("directord stopped")
    return status[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    try:
        config = config_from_args(args)
        auth = load_credentials(config.cluster).redis
    except ConfigError as exc:
        print(f"directord: {exc}", file=sys.stderr)
        return 2
    return serve(config, auth)


if __name__ == "__main__":
    sys.exit(main())
