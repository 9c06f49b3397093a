"""What the benchmarks share: the corpus, statistics, machine load, free loopback ports,
Markdown tables, a minimal LMTP client and a pool delivering over it, CPU accounting of
process trees, and an objmail cluster started for one run.

The objmail cluster is the one ``objmail dev up`` starts (:class:`ops.devcluster.DevCluster`:
PostgreSQL, a 6-node Redis Cluster, three objstored, directord, imapd), on free loopback
ports under a temporary directory, *durable* (PostgreSQL with fsync and synchronous commit,
objstored acknowledging after its LMDB commit), with the release's default settings
otherwise; it is always stopped and removed at the end.  Dovecot, the reference, comes
from :mod:`ops.bench.dovecot`.

Its security is one of :data:`SECURITY`: ``secure`` is the release's default (a keyring,
so keyed HMAC blob ids and AES-256-GCM; the blob plane's memcached login on objstored and
directord; Redis with an ACL user, PostgreSQL with scram-sha-256), ``plain`` the same
cluster with encryption and the blob-plane login off (``director.allow_plaintext``, no
``auth_file``).  Redis and PostgreSQL keep their passwords in both: the dev launcher always
sets them, and they cost one handshake per pooled connection, not per request.  The
benchmarks name the two ``objmail`` and ``objmail-plain`` (:data:`OBJMAIL_TARGETS`) and run
them side by side, alternating, to measure what security costs.  ``objmail-pure`` is the
release's cluster with ``OBJMAIL_PURE=1`` in its daemons' environment: the pure-Python
modules instead of their mypyc build (:mod:`runtime.compiled`), to measure what compiling
buys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeVar

from ops.config import (
    ClusterConfig,
    Config,
    DirectorConfig,
    ImapdConfig,
    ObjstoreConfig,
    parse_hostport,
    to_toml,
)
from ops.devcluster import DevCluster, DevOptions
from ops.launcher import ProcessSpec, free_port, free_port_block

__all__ = [
    "DEFAULT_CORPUS", "OBJMAIL_TARGETS", "PURE_TARGETS", "SECURITY", "LmtpClient", "LmtpError",
    "ObjmailCluster", "corpus_messages",
    "deliver_over", "free_block", "free_port", "human", "lmtp_payload", "load_text",
    "markdown_table", "median", "median_run", "objmail_config", "percentile", "process_tree",
    "tree_cpu_seconds", "wait_for_port", "wait_for_quiet",
]

DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"

#: The security settings an :class:`ObjmailCluster` runs with (see the module docstring).
SECURITY = ("secure", "plain")

#: Benchmark target names of objmail clusters, and the security each runs with.
OBJMAIL_TARGETS = {"objmail": "secure", "objmail-plain": "plain", "objmail-pure": "secure"}
#: Targets whose daemons run the pure-Python modules (``OBJMAIL_PURE=1``).
PURE_TARGETS = frozenset({"objmail-pure"})
_NOT_MAIL = ("FEATURES.tsv", "MANIFEST.sha256", "README.md")


# -- the corpus -------------------------------------------------------------------------


def corpus_messages(directory: Path, limit: int | None = None,
                    max_size: int = 512 * 1024) -> list[bytes]:
    """The corpus messages under ``directory`` (sorted by path, so every run and every
    server gets the same ones), at most ``limit``, each below ``max_size`` bytes."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in _NOT_MAIL
                   and "LICENSES" not in p.parts and p.stat().st_size < max_size)
    return [p.read_bytes() for p in files[:limit]]


# -- statistics and the machine ---------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 for no values)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Iterable[float]) -> float:
    found = list(values)
    return statistics.median(found) if found else 0.0


class _Timed(Protocol):
    """A benchmark result (a dataclass) with a rate and a tail latency."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    ops_per_sec: float
    p99_us: float


TimedT = TypeVar("TimedT", bound=_Timed)


def median_run(runs: Sequence[TimedT], **combined: float) -> TimedT:
    """The middle of ``runs`` by ops/s, carrying the medians of their ops/s and p99
    latency and the ``combined`` fields the caller computed over all of them."""
    mid = sorted(runs, key=lambda r: r.ops_per_sec)[len(runs) // 2]
    return dataclasses.replace(mid, ops_per_sec=statistics.median(r.ops_per_sec for r in runs),
                               p99_us=statistics.median(r.p99_us for r in runs), **combined)


def load_text() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def wait_for_quiet(max_load: float, timeout: float,
                   say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> float:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``timeout``
    seconds); the load average then."""
    deadline = time.monotonic() + timeout
    while True:
        load = os.getloadavg()[0]
        if load < max_load or time.monotonic() >= deadline:
            return load
        say(f"load average {load:.2f} >= {max_load}: waiting")
        time.sleep(15)


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their live descendants (PostgreSQL backends, Dovecot's children)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = [r for r in roots if r in parent]
    seen = set(found)
    i = 0
    while i < len(found):
        for pid, ppid in parent.items():
            if ppid == found[i] and pid not in seen:
                seen.add(pid)
                found.append(pid)
        i += 1
    return found


#: Process groups of a cluster, told apart by their command lines.
GROUPS = ("imapd", "postgres", "redis", "objstored", "directord")


def group_cpu(roots: Iterable[int]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) by process group."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(GROUPS, 0.0)
    for pid in process_tree(roots):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        fields = stat.rsplit(")", 1)[1].split()
        key = next((g for g in ("imapd", "objstore", "director") if g in cmd), None)
        if key is None:
            key = "redis" if "redis" in name else "postgres" if "postgres" in name else None
        if key is not None:
            group = {"objstore": "objstored", "director": "directord"}.get(key, key)
            out[group] += sum(int(f) for f in fields[11:15]) / ticks
    return out


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds of the process trees under ``roots``, reaped children
    included (a snapshot; take the difference around a measurement)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def human(size: int) -> str:
    """A byte count as the tables show it (``4 KiB``, ``1 MiB``, ``100 B``)."""
    for unit, n in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n} {unit}"
    return f"{size} B"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- loopback ports ---------------------------------------------------------------------


def free_block(count: int, rng: random.Random, bus_offset: int = 0) -> int:
    """First of ``count`` consecutive free loopback ports (and their bus ports)."""
    return free_port_block(count, bus_offset=bus_offset, rng=rng)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Return once something accepts connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# -- LMTP -------------------------------------------------------------------------------


class LmtpError(Exception):
    """An unexpected LMTP reply or a dropped connection."""


_LINE_START_DOT = re.compile(rb"(?m)^\.")
_BARE_EOL = re.compile(rb"\r\n|\r|\n")


def lmtp_payload(raw: bytes) -> bytes:
    """``raw`` as DATA puts it on the wire: CRLF line ends (what an MTA sends), leading
    dots doubled, the final ``.`` line added."""
    data = _LINE_START_DOT.sub(b"..", _BARE_EOL.sub(b"\r\n", raw))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class LmtpClient:
    """One LMTP connection (RFC 2033) that pipelines MAIL, RCPT and DATA (RFC 2920)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, name: str = "bench.local") -> LmtpClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        await client._expect(220)
        writer.write(f"LHLO {name}\r\n".encode())
        await client._expect(250)
        return client

    async def _reply(self) -> tuple[int, str]:
        text = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise LmtpError("connection closed")
            text.append(line[4:].decode(errors="replace").strip())
            if line[3:4] != b"-":
                return int(line[:3]), " ".join(text)

    async def _expect(self, code: int) -> str:
        got, text = await self._reply()
        if got != code:
            raise LmtpError(f"expected {code}, got {got} {text}")
        return text

    async def deliver(self, sender: str, recipients: Sequence[str], payload: bytes) -> list[int]:
        """Deliver ``payload`` (from :func:`lmtp_payload`); the reply code of each
        recipient (a refused RCPT gives its own code and no DATA reply)."""
        head = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in recipients] + ["DATA"]
        self.writer.write("".join(f"{line}\r\n" for line in head).encode())
        await self._expect(250)
        codes = [(await self._reply())[0] for _ in recipients]
        accepted = [i for i, c in enumerate(codes) if c == 250]
        data_code, text = await self._reply()
        if data_code != 354:
            if accepted:
                raise LmtpError(f"DATA refused: {data_code} {text}")
            return codes
        self.writer.write(payload)
        for i in accepted:
            codes[i] = (await self._reply())[0]
        return codes

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self._reply(), 5)
        except (LmtpError, OSError, TimeoutError):
            pass
        self.writer.close()


async def deliver_over(clients: Sequence[LmtpClient], count: int,
                       delivery: Callable[[int], tuple[str, str | Sequence[str], bytes]],
                       ) -> tuple[float, list[float], int]:
    """Deliver messages ``0 .. count - 1`` over the open ``clients``, which take them from
    one queue and are closed at the end; the wall time, each delivery's latency, and how
    many recipients were refused.

    :param delivery: message ``n``'s sender, recipient (or recipients) and payload, made
        just before it is sent (so that a large batch never sits in memory whole).
    """
    queue = list(reversed(range(count)))
    latencies: list[float] = []
    refused = 0

    async def worker(client: LmtpClient) -> None:
        nonlocal refused
        while queue:
            sender, rcpt, payload = delivery(queue.pop())
            t0 = time.perf_counter()
            codes = await client.deliver(sender, [rcpt] if isinstance(rcpt, str) else rcpt,
                                         payload)
            latencies.append(time.perf_counter() - t0)
            refused += sum(1 for c in codes if c != 250)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return elapsed, latencies, refused


# -- objmail ----------------------------------------------------------------------------


def objmail_config(seed: int | None = None) -> Config:
    """The release's defaults on free loopback ports."""
    rng = random.Random(seed)
    redis = free_block(6, rng, bus_offset=10000)
    objstore = free_block(3, rng)

    def free() -> str:
        return f"127.0.0.1:{free_port()}"

    return Config(
        cluster=ClusterConfig(pg_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/objmail",
                              redis_nodes=tuple(f"127.0.0.1:{redis + i}" for i in range(6))),
        objstore=ObjstoreConfig(listen=f"127.0.0.1:{objstore}",
                                metrics_listen=f"127.0.0.1:{free_block(3, rng)}"),
        director=DirectorConfig(listen=free(), metrics_listen=free()),
        imapd=ImapdConfig(imap_listen=free(), imaps_listen=free(), pop3_listen=free(),
                          lmtp_listen=free(), metrics_listen=free()))


@dataclass
class ObjmailCluster:
    """A whole objmail cluster for one benchmark run (a context manager).

    :param config: from :func:`objmail_config` unless given.
    :param progress: where start-up messages go.
    :param security: one of :data:`SECURITY`; ``plain`` turns encryption and the blob
        plane's login off.
    :param imapd_workers: ``[imapd] workers`` (0: one per core, the release's default;
        None: as ``config`` says).
    :param pure: start the daemons with ``OBJMAIL_PURE=1``: no compiled modules.
    :param source_root: the source tree the daemons run ("" = this checkout); setting
        ``PYTHONPATH`` alone is not enough, ``python -m`` puts the working directory first.
    """

    config: Config | None = None
    progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)
    security: str = "secure"
    imapd_workers: int | None = None
    pure: bool = False
    source_root: str = ""

    def __post_init__(self) -> None:
        if self.security not in SECURITY:
            raise ValueError(f"security must be one of {', '.join(SECURITY)}")
        if self.config is None:
            self.config = objmail_config()
        if self.imapd_workers is not None:
            self.config = dataclasses.replace(self.config, imapd=dataclasses.replace(
                self.config.imapd, workers=self.imapd_workers))
        plain = self.security == "plain"
        if plain:
            # No keyring: the dev launcher leaves the director unkeyed (sha256 ids, no
            # encryption) when the config says so.
            self.config = dataclasses.replace(self.config, director=dataclasses.replace(
                self.config.director, keyring_file="", allow_plaintext=True))
        self._tmp = tempfile.TemporaryDirectory(prefix=f"objmail-bench-{self.security}-")
        self.cluster = DevCluster(self.config, Path(self._tmp.name) / "var",
                                  DevOptions(objstore_count=3, blob_auth=not plain,
                                             source_root=self.source_root))
        self.config = self.cluster.config
        self._extra: list[ProcessSpec] = []

    @property
    def conf(self) -> Config:
        assert self.config is not None
        return self.config

    @property
    def imap_port(self) -> int:
        return parse_hostport(self.conf.imapd.imap_listen)[1]

    @property
    def lmtp_port(self) -> int:
        return parse_hostport(self.conf.imapd.lmtp_listen)[1]

    def pid(self, name: str) -> int | None:
        """The pid of one process of the cluster (``imapd``, ``postgres``, ...)."""
        return self.cluster.launcher.pid_of(self.cluster.spec(name))

    def server_pids(self) -> list[int]:
        """Every process the cluster runs (PostgreSQL's backends come with their parent)."""
        pids = [p.pid for p in self.cluster.status() if p.pid is not None]
        launcher = self.cluster.launcher
        return pids + [pid for spec in self._extra if (pid := launcher.pid_of(spec))]

    def add_imapd(self, name: str) -> tuple[int, int]:
        """Start one more imapd over the same storage, as a second frontend behind a load
        balancer would be (imapd keeps no state); its IMAP and LMTP ports."""
        def free() -> str:
            return f"127.0.0.1:{free_port()}"

        imapd = dataclasses.replace(self.conf.imapd, imap_listen=free(), imaps_listen=free(),
                                    pop3_listen=free(), lmtp_listen=free(),
                                    metrics_listen=free())
        config = dataclasses.replace(self.conf, imapd=imapd)
        path = self.cluster.run_dir / f"{name}.toml"
        path.write_text(to_toml(config))
        spec = self.cluster.imapd_spec(name=name, config=config, config_path=path)
        self._extra.append(spec)
        with self._daemon_environ():
            self.cluster.launcher.start(spec)
        return parse_hostport(imapd.imap_listen)[1], parse_hostport(imapd.lmtp_listen)[1]

    def add_users(self, names: Sequence[str], password: str, *, fast_hash: bool = False) -> None:
        """Create the users (with the default mailboxes).

        :param fast_hash: a cheap scrypt cost, for many users that never log in.
        """
        from metadata.passwords import DEFAULT_PARAMS, ScryptParams
        from metadata.store import MetadataStore

        params = ScryptParams(log_n=4) if fast_hash else DEFAULT_PARAMS

        async def create() -> None:
            store = await MetadataStore.open(self.conf.cluster.pg_dsn, pool_min=1, pool_max=4,
                                             password_params=params,
                                             password=self.cluster.credentials.pg_password)
            try:
                sem = asyncio.Semaphore(4)

                async def one(name: str) -> None:
                    async with sem:
                        await store.users.create(name, password)

                await asyncio.gather(*(one(n) for n in names))
            finally:
                await store.close()

        asyncio.run(create())

    @contextlib.contextmanager
    def _daemon_environ(self) -> Iterator[None]:
        """Daemons started inside inherit ``OBJMAIL_PURE=1`` when the cluster is pure (the
        launcher passes this process's environment on)."""
        if not self.pure:
            yield
            return
        before = os.environ.get("OBJMAIL_PURE")
        os.environ["OBJMAIL_PURE"] = "1"
        try:
            yield
        finally:
            if before is None:
                del os.environ["OBJMAIL_PURE"]
            else:
                os.environ["OBJMAIL_PURE"] = before

    def __enter__(self) -> ObjmailCluster:
        try:
            with self._daemon_environ():
                self.cluster.up(progress=self.progress)
        except BaseException:
            self._down()
            raise
        return self

    def _down(self) -> None:
        try:
            for spec in reversed(self._extra):
                self.cluster.launcher.stop(spec)
            self.cluster.down(progress=self.progress)
        finally:
            self._tmp.cleanup()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._down()
