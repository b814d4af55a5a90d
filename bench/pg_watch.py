"""What PostgreSQL did during a load, for `make bench`'s PostgreSQL figures.

    with PgWatch(cluster, url) as watch:
        ... run the load ...
    watch.lock_waits          # sampled waits, by kind, table and statement
    watch.conflicts, watch.cpu_s, watch.top_statements()

Lock waits are sampled from pg_locks (every lock a backend of this database waits for,
i.e. `pg_stat_activity.wait_event_type = 'Lock'`) every SAMPLE_S by a thread on its own
connection. A wait for a row (locktype `tuple` or `transactionid`: another transaction
wrote that row and has not committed) is kept with the statement that waits, which
names the table; an advisory lock wait (the single-runner work) is kept apart.

Conflicts: the serialisation failures and deadlocks the server logged meanwhile (each
is one try of an operation, which the store ran again), by the statement that failed.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

SAMPLE_S = 0.02
WAITS = """
SELECT l.locktype, coalesce(l.relation::regclass::text, ''), left(a.query, 70)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.datname = current_database() AND a.pid <> pg_backend_pid()
"""
ROW_LOCKS = ("tuple", "transactionid")


class PgWatch:
    def __init__(self, cluster, url: str, statements: bool = False) -> None:
        self.cluster, self.url, self.statements = cluster, url, statements
        self.samples = 0
        self.lock_waits: Counter = Counter()  # (locktype, relation, statement) -> samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._before: dict[str, Any] = {}
        self.conflicts: Counter = Counter()  # failed statement -> serialisation failures
        self.cpu_s = 0.0

    def __enter__(self) -> PgWatch:
        with psycopg.connect(self.url, autocommit=True) as conn:
            if self.statements:
                conn.execute("SELECT pg_stat_statements_reset()")
            self._before = {"log": self.cluster.log.stat().st_size,
                            "cpu": _server_cpu(self.cluster)}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        after = _server_cpu(self.cluster)
        before = self._before["cpu"]
        self.cpu_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
        with open(self.cluster.log, "rb") as log:
            log.seek(self._before["log"])
            lines = log.read().decode(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if "could not serialize access" in line or "deadlock detected" in line:
                failed = next((x.split("STATEMENT:", 1)[1] for x in lines[i + 1:i + 6]
                               if "STATEMENT:" in x), "?")
                self.conflicts[" ".join(failed.split())[:60]] += 1

    def _sample(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(SAMPLE_S):
                for locktype, relation, query in conn.execute(WAITS).fetchall():
                    self.lock_waits[(locktype, relation, " ".join(query.split()))] += 1
                self.samples += 1

    @property
    def row_waits(self) -> int:
        """Sampled waits for a row another transaction holds."""
        return sum(n for (kind, _, _), n in self.lock_waits.items() if kind in ROW_LOCKS)

    def waits_text(self) -> dict[str, int]:
        return {f"{kind} {relation} {query}".strip(): n
                for (kind, relation, query), n in self.lock_waits.most_common(8)}

    def statement_count(self) -> int:
        """Statements the brokers ran since `__enter__` (pg_stat_statements, BEGIN and
        COMMIT included; the watcher's own left out)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = (SELECT "
                "oid FROM pg_database WHERE datname = current_database()) AND query NOT "
                "LIKE '%pg_locks%' AND query NOT LIKE '%pg_stat%'").fetchone()
        return int(row[0]) if row else 0

    def top_statements(self, per: int, count: int = 6) -> list[str]:
        """The statements that took the most server time (pg_stat_statements), with
        their calls and server time per authorization (`per` of them in the run)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT calls, total_exec_time, left(query, 60) FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query NOT LIKE '%%pg_locks%%' AND query NOT LIKE '%%pg_stat%%'"
                " ORDER BY total_exec_time DESC LIMIT %s", (count,)).fetchall()
        return [f"{calls / per:.1f} calls, {ms * 1000 / per:.0f} us/op: "
                f"{' '.join(query.split())}" for calls, ms, query in rows]


def _server_cpu(cluster) -> dict[int, float]:
    """CPU seconds (user + system) of the postmaster and each of its children, by pid."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    out = {}
    for pid in (postmaster, *map(int, children)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out
