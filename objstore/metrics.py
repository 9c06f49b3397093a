"""objstored's Prometheus metrics: the node's counters, store and commit figures.

Nothing is counted here: the handler and the protocol already keep memcached's counters
(:class:`~objstore.stats.Counters`) and the store its commit counts; with several workers
every worker shares them through the stats file of the data directory
(:class:`~objstore.stats.SharedSlots`).  :class:`ObjstoreCollector` reads the node's totals
when Prometheus scrapes, so worker 0, which serves ``/metrics``, answers for the whole
node and the hot path pays nothing more.  Every name is listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from objstore.config import ObjstoreConfig
from objstore.reporter import disk_space
from objstore.stats import COMMIT_BUCKETS, LATENCY_BUCKETS, LATENCY_KINDS, OP_NAMES, histogram
from runtime.metrics import counter_family, cumulative, gauge_family

__all__ = ["ObjstoreCollector"]

#: (metric, memcached counter, help) of the plain counters.
_COUNTERS = (
    ("objstore_get_hits", "get_hits", "Keys read that were found."),
    ("objstore_get_misses", "get_misses", "Keys read that were not found."),
    ("objstore_get_expired", "get_expired", "Keys read that had expired."),
    ("objstore_received_bytes", "bytes_read", "Bytes read from clients."),
    ("objstore_sent_bytes", "bytes_written", "Bytes sent to clients."),
    ("objstore_connections", "total_connections", "Client connections accepted."),
    ("objstore_rejected_connections", "rejected_connections",
     "Connections refused: max_connections reached."),
    ("objstore_corrupt_reads", "corrupt_reads",
     "Reads that found a record failing its checksum (quarantined, answered as a miss)."),
    ("objstore_commit_batches", "commits", "Write transactions committed (group commits)."),
    ("objstore_committed_ops", "committed_ops", "Writes committed, all batches together."),
    ("objstore_expired_reclaimed", "reclaimed",
     "Expired items deleted (by the sweep or by a read that found them)."),
)


class ObjstoreCollector:
    """The node's figures, read at scrape time.

    :param totals: the node's counters summed over its workers
        (:func:`objstore.stats.totals`).
    :param info: the store's figures (:meth:`objstore.items.ItemStore.info`).
    :param hot: the node's hot keys with their read counts in the current window.
    """

    def __init__(self, config: ObjstoreConfig, totals: Callable[[], dict[str, int]],
                 info: Callable[[], dict[str, int]],
                 hot: Callable[[], Sequence[tuple[bytes, int]]]) -> None:
        self.config = config
        self._totals = totals
        self._info = info
        self._hot = hot

    def collect(self) -> Iterator[Metric]:
        t = self._totals()
        info = self._info()
        yield counter_family("objstore_commands", "Commands handled, by memcached command.",
                             ["command"], [((n,), t[f"ops_{n}"]) for n in OP_NAMES])
        for name, key, doc in _COUNTERS:
            yield counter_family(name, doc, rows=[((), t[key])])
        yield counter_family("objstore_rejected_stores",
                             "Writes refused: the value is too large, or the store is full.",
                             ["reason"], [(("too_large",), t["store_too_large"]),
                                          (("no_space",), t["store_no_memory"])])
        yield counter_family("objstore_dropped_connections",
                             "Connections closed by the server: idle too long, or a client "
                             "not reading its replies.", ["reason"],
                             [(("idle",), t["idle_dropped"]),
                              (("slow_reader",), t["slow_readers_dropped"])])
        yield gauge_family("objstore_open_connections", "Open client connections.",
                           rows=[((), t["curr_connections"])])
        commit = HistogramMetricFamily(
            "objstore_commit_seconds",
            "Time to commit one write transaction (data pages written and fdatasync'd).")
        commit.add_metric([], cumulative(COMMIT_BUCKETS, [
            t[f"commit_bucket_{i}"] for i in range(len(COMMIT_BUCKETS) + 1)]),
            t["commit_microseconds"] / 1e6)
        yield commit
        latency = HistogramMetricFamily(
            "objstore_request_seconds",
            "Sampled request latency (one in 16): a get's service time, a set's time to "
            "its durable reply.", labels=["kind"])
        for kind in LATENCY_KINDS:
            counts = histogram(t, f"{kind}_latency_bucket_", len(LATENCY_BUCKETS))
            latency.add_metric([kind], cumulative(LATENCY_BUCKETS, counts), 0.0)
        yield latency
        cfg = self.config
        try:
            space = disk_space(cfg.data_dir, occupied=info["lmdb_used_bytes"],
                               map_size=cfg.map_size, configured=cfg.capacity_bytes)
            capacity, fs_free = space.capacity, space.fs_free
        except OSError:  # the data dir went away: say what the config says
            capacity, fs_free = cfg.capacity_bytes or cfg.map_size, 0
        for name, value, doc in (
                ("objstore_items", info["curr_items"], "Items in the store."),
                ("objstore_item_bytes", info["bytes"], "Bytes of keys and values stored."),
                ("objstore_quarantined_items", info["quarantined_items"],
                 "Corrupt records set aside (see docs/objstore.md, Corruption)."),
                ("objstore_capacity_bytes", capacity,
                 "Bytes this node offers (objstore.capacity_bytes, else what its data "
                 "dir's filesystem can hold: used + free, capped by map_size)."),
                ("objstore_filesystem_free_bytes", fs_free,
                 "Free bytes of the data dir's filesystem."),
                ("objstore_lmdb_map_size_bytes", info["lmdb_map_size"],
                 "Size of the LMDB map: the most the store can hold."),
                ("objstore_lmdb_used_bytes", info["lmdb_used_bytes"],
                 "Bytes of the LMDB map in use (pages up to the last one used)."),
                ("objstore_lmdb_readers", info["lmdb_readers"],
                 "LMDB reader slots in use, all workers together."),
                ("objstore_workers", cfg.workers, "Worker processes serving the port.")):
            yield gauge_family(name, doc, rows=[((), value)])
        hot = self._hot()
        yield gauge_family("objstore_hot_keys",
                           "Keys in the hot-key table of the current report window.",
                           rows=[((), len(hot))])
        yield gauge_family("objstore_hottest_key_reads",
                           "Estimated reads of the hottest key in the current report window.",
                           rows=[((), max((count for _key, count in hot), default=0))])
