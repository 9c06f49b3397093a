"""``objstored``: parse the command line, load the config, run one or N worker processes.

``objstored --listen 127.0.0.1:11211 --data DIR [--config FILE] [--node-id ID] [--zone Z]
[--tier T] [--workers N] [--max-item-size BYTES] [--flush-all-enabled]``

The data directory holds ``lmdb/`` (the store), ``node_id`` (generated on first start unless
given), ``objstored.lock`` (one server per directory) and, with several workers,
``workers.stats`` (their shared counters).

With ``--workers N`` the first process is a supervisor: it forks N workers, each of which
opens the LMDB environment itself (after the fork, as LMDB requires) and listens on the same
port with SO_REUSEPORT; the supervisor forwards SIGTERM and restarts a worker that dies.
SIGTERM makes a worker stop accepting, commit what is queued, send the replies, and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from objstore.config import ObjstoreConfig, ObjstoredConfig
from runtime.config import (
    ClusterConfig,
    ConfigError,
    find_config_path,
    load,
    parse_hostport,
    parse_size,
)
from runtime.secrets import NO_REDIS_AUTH, RedisAuth, load_credentials

log = logging.getLogger("objstored")

NODE_ID_FILE: Final = "node_id"
LOCK_FILE: Final = "objstored.lock"
LMDB_DIR: Final = "lmdb"
SHARED_STATS_FILE: Final = "workers.stats"
_PR_SET_PDEATHSIG: Final = 1


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="objstored",
                                 description="objmail object server (memcached protocol on LMDB)")
    ap.add_argument("--listen", help="host:port to listen on (default from config)")
    ap.add_argument("--data", help="data directory (default from config)")
    ap.add_argument("--config", help="objmail.toml (default: $OBJMAIL_CONFIG, ./objmail.toml)")
    ap.add_argument("--node-id", help="node id (default: generated once, kept in the data dir)")
    ap.add_argument("--zone", help="failure zone reported to the directors")
    ap.add_argument("--tier", help="storage tier reported to the directors (ssd, hdd...)")
    ap.add_argument("--workers", type=int, help="processes sharing the port and the store")
    ap.add_argument("--max-item-size", help="largest value in bytes (e.g. 1M, up to 64M)")
    ap.add_argument("--flush-all-enabled", action="store_true", default=None,
                    help="allow flush_all (off by default: it deletes everything)")
    return ap


def _config_from_args(args: argparse.Namespace) -> tuple[ObjstoreConfig, ClusterConfig]:
    path = find_config_path(args.config, os.environ, Path.cwd())
    config = load(ObjstoredConfig, path, os.environ)
    changes: dict[str, Any] = {}
    for attr, key in (("listen", "listen"), ("data", "data_dir"), ("node_id", "node_id"),
                      ("zone", "zone"), ("tier", "tier"), ("workers", "workers"),
                      ("flush_all_enabled", "flush_all_enabled")):
        value = getattr(args, attr)
        if value is not None:
            changes[key] = value
    if args.max_item_size is not None:
        changes["max_item_size"] = parse_size(args.max_item_size, "--max-item-size")
    try:
        section = dataclasses.replace(config.objstore, **changes)
    except ConfigError as exc:
        raise ConfigError(f"objstore.{exc.key}", exc.message) from None
    return section, config.cluster


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


def _lock_data_dir(data_dir: Path) -> int:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError("objstore.data_dir",
                              f"{data_dir} is in use by another objstored") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _check_port_free(host: str, port: int) -> None:
    """SO_REUSEPORT would let us share a port with a stranger; refuse that up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError("objstore.listen", f"cannot listen on {host}:{port}: "
                              f"{exc.strerror}") from None


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor still forwards SIGTERM
        pass


def run_worker(config: ObjstoreConfig, cluster: ClusterConfig, node_id: str,
               index: int, auth: RedisAuth = NO_REDIS_AUTH) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code.

    :param auth: Redis credentials for the load reports (worker 0 writes them).
    """
    from twisted.internet import reactor, task
    from twisted.internet.threads import deferToThread
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    from objstore.handler import VERSION, Handler
    from objstore.items import ReapOp, Result
    from objstore.lmdbstore import LmdbStore
    from objstore.reporter import Identity, LoadReporter, LoadSample, RedisClusterSink
    from objstore.server import ObjstoreFactory, listen
    from objstore.stats import OP_NAMES, Counters, HotKeys, SharedSlots, totals

    # The group-commit thread and the reactor share the GIL; the default 5 ms switch
    # interval would make a finished fsync wait behind the reactor (and vice versa) for up
    # to 5 ms, capping durable writes at a few hundred batches per second.
    sys.setswitchinterval(0.0002)
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()],  # type: ignore[list-item]
                                   redirectStandardIO=False)
    r: Any = reactor
    data_dir = Path(config.data_dir)
    storage = LmdbStore(data_dir / LMDB_DIR, map_size=config.map_size,
                        max_item_size=config.max_item_size,
                        max_readers=max(126, 64 * config.workers))
    counters = Counters()
    hot = HotKeys()
    shared = (SharedSlots(data_dir / SHARED_STATS_FILE, config.workers, index)
              if config.workers > 1 else None)

    def node_totals() -> dict[str, int]:
        snaps = [counters.snapshot()]
        if shared is not None:
            snaps += [numbers for numbers, _hot in shared.others()]
        return totals(snaps)

    def deliver(batch: list[tuple[Any, Result]]) -> None:
        r.callFromThread(_run_callbacks, batch)

    storage.start(deliver, config.group_commit_max)
    handler = Handler(storage, config, counters, hot, node_totals, node_id=node_id)
    factory = ObjstoreFactory(handler, config, counters, r)
    host, port = parse_hostport(config.listen, "objstore.listen")
    listening = listen(r, host, port, factory)
    log.info("objstored worker %d (pid %d) node %s serving %s, data in %s", index,
             os.getpid(), node_id, config.listen, data_dir)

    loops: list[task.LoopingCall] = []
    if shared is not None:
        def publish() -> None:
            handler.sync_storage_counters()
            shared.publish(counters.snapshot(), hot.top(256))
        loops.append(task.LoopingCall(publish))
        loops[-1].start(1.0, now=True)

    reporter: LoadReporter | None = None
    if index == 0:
        identity = Identity(node_id=node_id, address=config.listen, zone=config.zone,
                            tier=config.tier, workers=config.workers, version=VERSION.decode())

        def sample() -> LoadSample:
            handler.sync_storage_counters()
            info = storage.info()
            counts = node_totals()
            merged = dict(hot.top(4096))
            if shared is not None:
                for _numbers, their_hot in shared.others():
                    for key, count in their_hot:
                        merged[key] = merged.get(key, 0) + count
            return LoadSample(
                at=time.time(), capacity_bytes=config.capacity_bytes or config.map_size,
                used_bytes=info["bytes"], items=info["curr_items"],
                ops=[counts[f"ops_{n}"] for n in OP_NAMES], hot=list(merged.items()),
                extra={"curr_connections": counts["curr_connections"],
                       "corrupt_reads": counts["corrupt_reads"],
                       "quarantined_items": info["quarantined_items"],
                       "lmdb_map_size": info["lmdb_map_size"],
                       "lmdb_used_bytes": info["lmdb_used_bytes"], "pid": os.getpid()})

        sink = RedisClusterSink(cluster.redis_nodes, prefix=cluster.redis_prefix, auth=auth)
        reporter = LoadReporter(identity, sample, sink, r, deferToThread,
                                config.report_interval, config.report_ttl, config.hot_keys,
                                on_report=hot.clear)
        reporter.start()

        if config.expire_sweep_interval > 0:
            cursor = [b""]

            def sweep() -> None:
                def moved(res: Result) -> None:
                    cursor[0] = res.record.key if res.record is not None else b""
                storage.submit(ReapOp(cursor[0], 1000), moved)
            loops.append(task.LoopingCall(sweep))
            loops[-1].start(config.expire_sweep_interval, now=False)
    elif config.workers > 1:
        # Other workers' hot keys reach worker 0 through their slot; restart their window.
        loops.append(task.LoopingCall(hot.clear))
        loops[-1].start(config.report_interval, now=False)

    def shutdown() -> Any:
        from twisted.internet import defer

        log.info("worker %d stopping: no new connections, committing queued writes", index)
        for loop in loops:
            if loop.running:
                loop.stop()
        if reporter is not None:
            reporter.stop()
        d = defer.maybeDeferred(listening.stopListening)
        d.addCallback(lambda _: deferToThread(storage.close_committer))
        d.addCallback(lambda _: factory.close_all(timeout=5.0))
        return d

    r.addSystemEventTrigger("before", "shutdown", shutdown)
    r.run()
    storage.close()
    if shared is not None:
        shared.close()
    log.info("worker %d stopped", index)
    return 0


def _run_callbacks(batch: list[tuple[Any, Any]]) -> None:
    for callback, result in batch:
        try:
            callback(result)
        except Exception:
            log.exception("write completion callback failed")


def supervise(config: ObjstoreConfig, cluster: ClusterConfig, node_id: str,
              auth: RedisAuth = NO_REDIS_AUTH) -> int:
    """Fork ``config.workers`` workers and keep them running until SIGTERM/SIGINT."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _die_with_parent()
                code = run_worker(config, cluster, node_id, index, auth)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(config.workers):
        spawn(i)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        failures += 1
        log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
        time.sleep(min(0.5 * failures, 5.0))
        if not stopping:
            spawn(index)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    try:
        config, cluster = _config_from_args(args)
        auth = load_credentials(cluster).redis
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        node_id = resolve_node_id(data_dir, config.node_id)
        config = dataclasses.replace(config, node_id=node_id)
        lock_fd = _lock_data_dir(data_dir)
        host, port = parse_hostport(config.listen, "objstore.listen")
        _check_port_free(host, port)
    except ConfigError as exc:
        print(f"objstored: {exc}", file=sys.stderr)
        return 2
    try:
        if config.workers == 1:
            return run_worker(config, cluster, node_id, 0, auth)
        return supervise(config, cluster, node_id, auth)
    finally:
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
