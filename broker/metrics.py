"""Prometheus metrics of a broker process (docs/operations.md lists every family).

Each `BrokerMetrics` has its own CollectorRegistry, so several brokers can live in one
process (tests) without sharing counters. Three sources:

- RPCs: `common.metrics.RpcMetrics`, fed by common/interceptors.py (the worker's too);
- the LMDB writer: `observe_commit`, hooked into LmdbStore.commit_observer;
- the ledger: `LedgerCollector` reads it when scraped (holds and open sessions now;
  settlements, spend and fees from the journal entries committed since start).

This module, common/metrics.py and worker/metrics.py are the only ones that import
prometheus_client.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.metrics import RpcMetrics

from .core import stats
from .store.base import Store
from .store.buffered import StoreClosed

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
COMMIT_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1)


class LedgerCollector(Collector):
    """Ledger figures, read when scraped (one read snapshot per scrape)."""

    def __init__(self, store: Store):
        self._store = store
        self._lock = threading.Lock()  # scrapes may overlap
        self._tally = stats.Tally(seq=store.read(stats.journal_head))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                while self._store.read(self._tally.catch_up):
                    pass
                holds = self._store.read(stats.holds)
            except StoreClosed:  # shutting down
                return
            t = self._tally
            yield _gauge("broker_holds_pending", "Holds (authorizations) not yet resolved.",
                         holds.pending)
            yield _gauge("broker_holds_pending_amount",
                         "Micro-credits on hold in pending authorizations.", holds.amount)
            yield _gauge("broker_metering_sessions_open",
                         "Metering sessions redeemed and not yet settled.", holds.open_sessions)
            yield _labelled_counter(
                "broker_settlements", "Settled metering sessions since the broker started, by "
                "outcome (finished, stopped, hold_expired).", "outcome", t.settlements)
            yield _counter("broker_spend", "Micro-credits charged to agents at settlement "
                           "since the broker started.", t.charged)
            yield _counter("broker_worker_payouts", "Micro-credits paid to workers' providers "
                           "at settlement since the broker started.", t.payouts)
            yield _counter("broker_platform_fees", "Micro-credits of platform fees at "
                           "settlement since the broker started.", t.fees)
            yield _counter("broker_authorized_amount", "Micro-credits put on hold by "
                           "authorizations since the broker started.", t.authorized)
            yield _labelled_counter(
                "broker_journal_entries", "Journal entries (committed state changes) since "
                "the broker started, by kind.", "kind", t.events)


class MemoryTablesCollector(Collector):
    """Size and limit of each table the broker keeps in memory (docs/reliability.md,
    "Memory"), read when scraped from `tables()`: name -> (entries, limit or None)."""

    def __init__(self, tables: Callable[[], dict[str, tuple[int, int | None]]]):
        self._tables = tables

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily("broker_memory_table_entries", "Entries in each table "
                                    "kept in memory, by table.", labels=["table"])
        limits = GaugeMetricFamily("broker_memory_table_limit", "Most entries each table kept "
                                   "in memory may hold (tables bounded by a number).",
                                   labels=["table"])
        for name, (size, limit) in sorted(self._tables().items()):
            entries.add_metric([name], size)
            if limit is not None:
                limits.add_metric([name], limit)
        yield entries
        yield limits


def _labelled_counter(name: str, documentation: str, label: str,
                      counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


_live: weakref.WeakSet[BrokerMetrics] = weakref.WeakSet()


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc = RpcMetrics(self.registry)
        self._batch = Histogram("broker_ledger_commit_batch_size",
                                "Operations per LMDB write transaction (group commit).",
                                buckets=BATCH_BUCKETS, registry=self.registry)
        self._commit = Histogram("broker_ledger_commit_seconds",
                                 "Time to commit one batch, fsync included.",
                                 buckets=COMMIT_SECONDS_BUCKETS, registry=self.registry)
        self._failed = Counter("broker_ledger_commit_failures",
                               "Batches whose commit failed (none of their operations "
                               "took effect).", registry=self.registry)
        self._alerts = Counter("broker_alerts", "Alerts raised, by kind.", ["kind"],
                               registry=self.registry)
        self._task_failures = Counter(
            "broker_background_task_failures", "Failures of background work, by task "
            "(sweep.<step> for each step of the sweep, audit; each is retried).", ["task"],
            registry=self.registry)
        _live.add(self)

    def observe_commit(self, batch_size: int, seconds: float, committed: bool) -> None:
        """LmdbStore.commit_observer (runs on the writer thread)."""
        self._batch.observe(batch_size)
        if committed:
            self._commit.observe(seconds)
        else:
            self._failed.inc()

    def watch_ledger(self, store: Store) -> None:
        self.registry.register(LedgerCollector(store))
        Gauge("broker_storage_full", "1 while ledger writes fail for lack of room (disk or "
              "LMDB map full; health is NOT_SERVING meanwhile), else 0.",
              registry=self.registry).set_function(lambda: float(store.storage_full))

    def task_failed(self, task: str) -> None:
        self._task_failures.labels(task).inc()

    def watch_tables(self, tables: Callable[[], dict[str, tuple[int, int | None]]]) -> None:
        self.registry.register(MemoryTablesCollector(tables))

    def alert(self, kind: str) -> None:
        self._alerts.labels(kind).inc()


def alert(kind: str) -> None:
    """Count an alert of `kind` (e.g. "spend_threshold") in broker_alerts_total.

    A plain function so that any adapter can call it after the alert is committed;
    it counts in every BrokerMetrics of this process (one, outside tests)."""
    for metrics in list(_live):
        metrics.alert(kind)
