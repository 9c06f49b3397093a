"""``objstored``: parse the command line, load the config, run one or N worker processes.

``objstored --listen 127.0.0.1:11211 --data DIR [--config FILE] [--node-id ID] [--zone Z] [--site S]
[--tier T] [--workers N] [--max-item-size BYTES] [--flush-all-enabled]
[--metrics-listen HOST:PORT] [--log-format text|json] [--log-level LEVEL]``

It runs as every objmail daemon does (:func:`runtime.daemon.run_daemon`: logging, exit
status 78 for a bad configuration, 71 when the port or the data directory is taken).
The data directory holds ``lmdb/`` (the store), ``node_id`` (generated on first start
unless given), ``objstored.lock`` (one server per directory), ``expiry.state`` (where the
expiry sweep is, :mod:`objstore.expiry`) and, with several workers, ``workers.stats``
(their shared counters).

With ``--workers N`` the first process is a supervisor: it forks N workers, each of which
opens the LMDB environment itself (after the fork, as LMDB requires), runs Twisted's
default reactor and listens on the same port with SO_REUSEPORT; the supervisor forwards
SIGTERM and restarts a worker that dies.  Worker 0 also sends the load reports, runs the
expiry sweep and serves the node's Prometheus metrics (``objstore.metrics_listen``), the
other workers' counters read from the shared stats file.  SIGTERM makes a worker stop
accepting, commit what is queued, send the replies, and exit 0.

The files that say who may use the port (``objstore.auth_file``, memcached's authfile;
``tls_cert``/``tls_key``/``tls_ca``) are read once, before the workers fork; a missing,
malformed or (the auth file) group- or world-readable one exits 78.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from objstore.config import ObjstoreConfig, ObjstoredConfig
from objstore.server import OPEN, Security
from runtime import logs
from runtime.config import ClusterConfig, ConfigError, parse_hostport, parse_size
from runtime.daemon import (
    StartError,
    arg_parser,
    load_config,
    replace_section,
    run_daemon,
    run_reactor,
)
from runtime.secrets import NO_REDIS_AUTH, RedisAuth, load_credentials
from runtime.workers import check_port_free, supervise

log = logging.getLogger("objstored")

NODE_ID_FILE: Final = "node_id"
#: The node's number in the directors' registry, as last learned (objstore.reporter).
NODE_NUMBER_FILE: Final = "node_number"
LOCK_FILE: Final = "objstored.lock"
LMDB_DIR: Final = "lmdb"
SHARED_STATS_FILE: Final = "workers.stats"


def build_arg_parser() -> argparse.ArgumentParser:
    ap = arg_parser("objstored", "objmail object server (memcached protocol on LMDB)",
                    metrics_key="objstore.metrics_listen")
    ap.add_argument("--listen", help="host:port to listen on (default from config)")
    ap.add_argument("--data", help="data directory (default from config)")
    ap.add_argument("--node-id", help="node id (default: generated once, kept in the data dir)")
    ap.add_argument("--zone", help="failure zone reported to the directors")
    ap.add_argument("--site", help="site (above the zone) reported to the directors")
    ap.add_argument("--tier", help="storage tier reported to the directors (ssd, hdd...)")
    ap.add_argument("--workers", type=int, help="processes sharing the port and the store")
    ap.add_argument("--max-item-size", help="largest value in bytes (e.g. 1M, up to 64M)")
    ap.add_argument("--flush-all-enabled", action="store_true", default=None,
                    help="allow flush_all (off by default: it deletes everything)")
    return ap


def configure(args: argparse.Namespace) -> ObjstoredConfig:
    """The config file with the command line's overrides, the data directory made and
    the node id settled (:func:`resolve_node_id`).

    :raises ConfigError: a bad file or value, named by its key.
    """
    config = load_config(ObjstoredConfig, args)
    changes: dict[str, Any] = {}
    for attr, key in (("listen", "listen"), ("data", "data_dir"), ("node_id", "node_id"),
                      ("zone", "zone"), ("site", "site"), ("tier", "tier"),
                      ("workers", "workers"),
                      ("flush_all_enabled", "flush_all_enabled"),
                      ("metrics_listen", "metrics_listen")):
        value = getattr(args, attr)
        if value is not None:
            changes[key] = value
    if args.max_item_size is not None:
        changes["max_item_size"] = parse_size(args.max_item_size, "--max-item-size")
    config = replace_section(config, "objstore", changes)
    data_dir = Path(config.objstore.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    node_id = resolve_node_id(data_dir, config.objstore.node_id)
    return replace_section(config, "objstore", {"node_id": node_id})


def resolve_node_id(data_dir: Path, wanted: str) -> str:
    """The node id kept in ``data_dir``; created from ``wanted`` or a fresh uuid.

    :raises ConfigError: ``wanted`` differs from the id already recorded there (the data
        would otherwise be attributed to another node).
    """
    path = data_dir / NODE_ID_FILE
    if wanted and any(c in wanted for c in "{} \t\r\n"):
        raise ConfigError("objstore.node_id", f"must not contain braces or spaces: {wanted!r}")
    if path.exists():
        recorded = path.read_text(encoding="utf-8").strip()
        if wanted and wanted != recorded:
            raise ConfigError("objstore.node_id",
                              f"{data_dir} belongs to node {recorded!r}, not {wanted!r}")
        return recorded
    node_id = wanted or f"obj-{uuid.uuid4().hex[:12]}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return node_id


def read_node_number(data_dir: Path) -> int:
    """The registry number kept in ``data_dir`` (0 when none was learned yet)."""
    try:
        return max(0, int((data_dir / NODE_NUMBER_FILE).read_text(encoding="ascii")))
    except (OSError, ValueError):
        return 0


def keep_node_number(data_dir: Path, number: int) -> None:
    """Keep ``number`` in ``data_dir`` (atomically); 0 forgets it.  A failure is logged:
    the number is kept in memory and written again when it next changes."""
    path = data_dir / NODE_NUMBER_FILE
    try:
        if number <= 0:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{number}\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep the node number in %s: %s", path, exc)


def _lock_data_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StartError(f"objstore.data_dir: {data_dir} is in use by another "
                             "objstored") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Worker:
    """One serving process: the store, the port, and (worker 0) the node's duties.

    :meth:`start` opens the store and listens; :meth:`stop` (before the reactor shuts
    down) stops accepting, commits what is queued and lets the connections finish;
    :meth:`close` (after the reactor stopped) closes the store.
    """

    def __init__(self, config: ObjstoreConfig, cluster: ClusterConfig, index: int,
                 reactor: Any, auth: RedisAuth = NO_REDIS_AUTH,
                 security: Security = OPEN) -> None:
        self.config = config
        self.cluster = cluster
        #: Redis credentials for the load reports (worker 0 writes them).
        self.auth = auth
        #: Who may use the port (auth file, TLS), read once before the workers forked.
        self.security = security
        self.index = index
        self.reactor = reactor
        self.storage: Any = None
        self.shared: Any = None
        self.factory: Any = None
        self.ports: list[Any] = []
        self.loops: list[Any] = []
        self.reporter: Any = None
        self.sweep: Any = None
        #: This process's metrics (worker 0 only: it answers for the node).
        self.registry: Any = None

    def start(self) -> None:
        from twisted.internet import task
        from twisted.internet.threads import deferToThread

        from objstore.expiry import STATE_FILE, ExpirySweep
        from objstore.handler import VERSION, Handler
        from objstore.items import Result
        from objstore.lmdbstore import LmdbStore
        from objstore.metrics import ObjstoreCollector
        from objstore.reporter import (
            Identity,
            LoadReporter,
            LoadSample,
            ProcReader,
            RedisClusterSink,
            disk_space,
        )
        from objstore.server import ObjstoreFactory, listen
        from objstore.stats import (
            COMMIT_BUCKETS,
            LATENCY_BUCKETS,
            OP_NAMES,
            Counters,
            HotKeys,
            SharedSlots,
            histogram,
            totals,
        )
        from runtime.metrics import JobMetrics, listen_metrics, new_registry

        config, r, index = self.config, self.reactor, self.index
        data_dir = Path(config.data_dir)
        storage = self.storage = LmdbStore(data_dir / LMDB_DIR, map_size=config.map_size,
                                           max_item_size=config.max_item_size,
                                           max_readers=max(126, 64 * config.workers))
        counters = Counters()
        hot = HotKeys()
        shared = self.shared = (SharedSlots(data_dir / SHARED_STATS_FILE, config.workers, index)
                                if config.workers > 1 else None)

        def node_totals() -> dict[str, int]:
            snaps = [counters.snapshot()]
            if shared is not None:
                snaps += [numbers for numbers, _hot in shared.others()]
            return totals(snaps)

        def deliver(batch: list[tuple[Any, Result]]) -> None:
            r.callFromThread(self.factory.complete_writes, batch)

        storage.start(deliver, config.group_commit_max)
        handler = Handler(storage, config, counters, hot, node_totals, node_id=config.node_id)
        security = self.security
        self.factory = ObjstoreFactory(handler, config, counters, r, auth=security.auth)
        handler.connections = self.factory.describe_connections
        host, port = parse_hostport(config.listen, "objstore.listen")
        self.ports.append(listen(r, host, port, self.factory, tls=security.tls))
        log.info("objstored worker %d (pid %d) node %s serving %s%s%s, data in %s", index,
                 os.getpid(), config.node_id, config.listen,
                 " over TLS" if security.tls is not None else "",
                 f", {len(security.auth)} user(s) may authenticate"
                 if security.auth is not None else "", data_dir)

        if shared is not None:
            def publish() -> None:
                handler.sync_storage_counters()
                shared.publish(counters.snapshot(), hot.top(256))
            self._every(task.LoopingCall(publish), 1.0, now=True)

        if index != 0:
            if config.workers > 1:
                # Other workers' hot keys reach worker 0 through their slot; restart
                # their window.
                self._every(task.LoopingCall(hot.clear), config.report_interval)
            return

        def node_hot(n: int) -> list[tuple[bytes, int]]:
            merged = dict(hot.top(n))
            if shared is not None:
                for _numbers, their_hot in shared.others():
                    for key, count in their_hot:
                        merged[key] = merged.get(key, 0) + count
            return list(merged.items())

        def node_figures() -> dict[str, int]:
            handler.sync_storage_counters()
            return node_totals()

        registry = self.registry = new_registry("objstore")
        registry.register(ObjstoreCollector(config, node_figures, storage.info,
                                            lambda: node_hot(4096)))
        jobs = JobMetrics(registry, "objstore", r.seconds)
        identity = Identity(node_id=config.node_id, address=config.listen, zone=config.zone,
                            tier=config.tier, site=config.site, workers=config.workers,
                            version=VERSION.decode())

        proc = ProcReader(data_dir)

        def sample() -> LoadSample:
            info = storage.info()
            counts = node_figures()
            space = disk_space(data_dir, occupied=info["lmdb_used_bytes"],
                               map_size=config.map_size, configured=config.capacity_bytes)
            pids = [os.getpid(), *(shared.pids() if shared is not None else ())]
            return LoadSample(
                at=time.time(), capacity_bytes=space.capacity,
                used_bytes=info["bytes"], items=info["curr_items"],
                ops=[counts[f"ops_{n}"] for n in OP_NAMES], hot=node_hot(4096),
                fs_free_bytes=space.fs_free, system=proc.read(pids),
                latency={
                    "get": (LATENCY_BUCKETS, histogram(counts, "get_latency_bucket_",
                                                       len(LATENCY_BUCKETS))),
                    "set": (LATENCY_BUCKETS, histogram(counts, "set_latency_bucket_",
                                                       len(LATENCY_BUCKETS))),
                    "commit": (COMMIT_BUCKETS, histogram(counts, "commit_bucket_",
                                                         len(COMMIT_BUCKETS)))},
                extra={"curr_connections": counts["curr_connections"],
                       "corrupt_reads": counts["corrupt_reads"],
                       "quarantined_items": info["quarantined_items"],
                       "lmdb_map_size": info["lmdb_map_size"],
                       "lmdb_used_bytes": info["lmdb_used_bytes"], "pid": os.getpid()})

        sink = RedisClusterSink(self.cluster.redis_nodes, prefix=self.cluster.redis_prefix,
                                auth=self.auth)
        self.reporter = LoadReporter(identity, sample, sink, r, deferToThread,
                                     config.report_interval, config.report_ttl,
                                     config.hot_keys, on_report=hot.clear,
                                     recorder=jobs.job("load_report"),
                                     number=read_node_number(data_dir),
                                     on_number=lambda n: keep_node_number(data_dir, n))
        self.reporter.start()
        if config.expire_sweep_interval > 0:
            self.sweep = ExpirySweep(storage, data_dir / STATE_FILE, r, jobs.job("expiry"))
            self.sweep.run_forever(config.expire_sweep_interval)
        if config.metrics_listen:
            self.ports.append(listen_metrics(r, config.metrics_listen,
                                             "objstore.metrics_listen", registry))
            log.info("metrics on http://%s/metrics", config.metrics_listen)

    def _every(self, loop: Any, interval: float, now: bool = False) -> None:
        loop.clock = self.reactor
        loop.start(interval, now=now)
        self.loops.append(loop)

    def stop(self) -> Any:
        from twisted.internet import defer
        from twisted.internet.threads import deferToThread

        log.info("worker %d stopping: no new connections, committing queued writes",
                 self.index)
        for loop in self.loops:
            if loop.running:
                loop.stop()
        if self.sweep is not None:
            self.sweep.stop()
        if self.reporter is not None:
            self.reporter.stop()
        d: Any = defer.gatherResults([defer.maybeDeferred(p.stopListening)
                                      for p in self.ports])
        if self.storage is not None:
            d.addCallback(lambda _: deferToThread(self.storage.close_committer))
        if self.factory is not None:
            d.addCallback(lambda _: self.factory.close_all(timeout=5.0))
        return d

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()
        if self.shared is not None:
            self.shared.close()


def run_worker(config: ObjstoreConfig, cluster: ClusterConfig, index: int,
               auth: RedisAuth = NO_REDIS_AUTH, security: Security = OPEN) -> int:
    """Serve until SIGTERM/SIGINT on Twisted's default reactor; returns the exit code.

    :param auth: Redis credentials for the load reports (``runtime.secrets``).
    :param security: who may use the port (:meth:`Security.load`).
    """
    # The group-commit thread and the reactor share the GIL; the default 5 ms switch
    # interval would make a finished fsync wait behind the reactor (and vice versa) for up
    # to 5 ms, capping durable writes at a few hundred batches per second.
    sys.setswitchinterval(0.0002)
    logs.route_twisted()
    from twisted.internet import reactor

    worker = Worker(config, cluster, index, reactor, auth, security)
    code = run_reactor(reactor, f"objstored worker {index}", worker.start, worker.stop)
    worker.close()
    log.info("worker %d stopped", index)
    return code


def serve(config: ObjstoredConfig) -> int:
    """Read the secrets, take the data directory, check the ports, run the worker(s);
    the exit status.

    :raises ConfigError: a secret, auth or TLS file is missing, malformed or (a secret)
        not private (78).
    :raises StartError: the data directory or a port is taken (71).
    """
    section = config.objstore
    # Read once, before forking: every worker gets them, none reads the files again.
    auth = load_credentials(config.cluster).redis
    security = Security.load("objstore", section)
    lock_fd = _lock_data_dir(Path(section.data_dir))
    try:
        check_port_free(section.listen, "objstore.listen")
        if section.metrics_listen:
            # Worker 0 would otherwise fail, be restarted, and fail again.
            check_port_free(section.metrics_listen, "objstore.metrics_listen")
        if section.workers == 1:
            return run_worker(section, config.cluster, 0, auth, security)
        return supervise(section.workers,
                         lambda index: run_worker(section, config.cluster, index, auth, security),
                         log)
    finally:
        os.close(lock_fd)


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon("objstored", argv, build_arg_parser(), configure, serve)


if __name__ == "__main__":
    sys.exit(main())
