"""`make bench`: the broker's throughput and latency, each against a bare grpc.aio echo
server measured in the same run with the same client harness (bench/harness.py).

    .venv/bin/python scripts/bench.py [--quick] [--only NAME ...] [--profile DIR]

Prints one JSON object per line, {"name", "value", "unit", "baseline", "ratio"} plus
"target" and "note" where they apply, and writes them all to bench/results.json.
Servers and client processes all run on this machine: the load shares its cores with
the server under test. Throughput figures are the best of `rounds` runs of each side
(interference from other work only ever slows a run down). --quick: short runs (a few
seconds per figure), 1,000 idle sessions and a 200,000-entry ledger, for development.
--profile DIR: instead of the figures, run the authorize and usage-report loads against
a broker under cProfile and write the profiles and their top functions to DIR.
docs/performance.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness, ledger_fill  # noqa: E402
from bench.harness import Load, Outcome  # noqa: E402
from bench.world import BrokerServer, EchoServer, make_world  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
CALLERS = 64
CLIENT_PROCESSES = 2
BUSY_PACE_S = 0.1  # sessions_open: how often each busy stream reports
SESSIONS_PER_WORKER = 500  # sessions_open: idle streams per worker key


@dataclass
class Settings:
    warmup_s: float
    duration_s: float
    rounds: int
    idle_sessions: int
    ledger_entries: int
    stop_duration_s: float
    fleet: Fleet


@dataclass
class Fleet:
    """The fleet simulation's size: workers (split over client processes, each worker
    its own MeterWorker stream and usage key), running sessions per worker, seconds."""
    workers: int
    sessions: int
    seconds: float
    processes: int = 4


FULL = Settings(warmup_s=2, duration_s=8, rounds=2, idle_sessions=10_000,
                ledger_entries=5_000_000, stop_duration_s=12,
                fleet=Fleet(workers=1_000, sessions=4, seconds=60))
QUICK = Settings(warmup_s=0.5, duration_s=2, rounds=1, idle_sessions=1_000,
                 ledger_entries=200_000, stop_duration_s=3,
                 fleet=Fleet(workers=100, sessions=4, seconds=15, processes=2))


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    results: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, name: str, value: float, unit: str, baseline: float | None = None,
             ratio: float | None = None, **extra: Any) -> None:
        row = {"name": name, "value": _round(value), "unit": unit,
               "baseline": _round(baseline), "ratio": _round(ratio, 3), **extra}
        self.results.append(row)
        print(json.dumps(row), flush=True)

    def load(self, target: str, workload: str, params: dict[str, Any], **kwargs: Any) -> Load:
        kwargs.setdefault("warmup_s", self.settings.warmup_s)
        kwargs.setdefault("duration_s", self.settings.duration_s)
        kwargs.setdefault("processes", CLIENT_PROCESSES)
        kwargs.setdefault("callers", CALLERS)
        return Load(target=target, workload=workload, params=params, **kwargs)

    def best_of(self, *loads: Load, rounds: int | None = None) -> list[Outcome]:
        """Run the loads in turn, `rounds` times; the best outcome of each."""
        best: list[Outcome | None] = [None] * len(loads)
        for _ in range(rounds or self.settings.rounds):
            for i, load in enumerate(loads):
                outcome = checked(harness.run(load), load.workload)
                if best[i] is None or outcome.rate > best[i].rate:
                    best[i] = outcome
        return best  # type: ignore[return-value]

    def broker(self, name: str, **kwargs: Any) -> BrokerServer:
        return BrokerServer(self.workdir, name, **kwargs)


def checked(outcome: Outcome, what: str) -> Outcome:
    if outcome.errors:
        raise RuntimeError(f"{what}: {len(outcome.errors)} errors, e.g. {outcome.errors[:3]}")
    if not outcome.ops:
        raise RuntimeError(f"{what}: no operation completed")
    return outcome


def _round(value: float | None, digits: int = 1) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, digits)


def reports_for(b: Bench, rate_guess: float, callers: int) -> int:
    """Reports to sign ahead per stream: enough for `rate_guess` reports/s in total."""
    s = b.settings
    return int(rate_guess * (s.warmup_s + s.duration_s + 1) / callers) + 100


# -- figures ----------------------------------------------------------------------------


def fig_authorize(b: Bench) -> None:
    """authorize_per_s (1 and 2 server processes) and durable_vs_nosync."""
    with EchoServer(b.workdir, "echo-unary") as echo, \
            b.broker("authorize") as durable, b.broker("nosync", nosync=True) as nosync:
        worlds = [make_world(s.target, s.admin_key, agents=CALLERS, workers=1)
                  for s in (durable, nosync)]
        base, one, fast = b.best_of(
            b.load(echo.target, "authorize", {"echo": True}),
            b.load(durable.target, "authorize", worlds[0]),
            b.load(nosync.target, "authorize", worlds[1]))
    b.emit("authorize_per_s", one.rate, "authorizations/s", base.rate, one.rate / base.rate,
           target=">= 0.35", p99_ms=_round(one.percentile(99)),
           note="1 broker process, durable (fsync per group commit); 64 callers in 2 "
                "client processes; baseline: bare grpc.aio unary echo")
    b.emit("durable_vs_nosync", one.rate, "authorizations/s", fast.rate, one.rate / fast.rate,
           target=">= 0.8", note="authorize_per_s with fsync / the same without fsync")
    with b.broker("authorize-2p", processes=2) as two:
        world = make_world(two.target, two.admin_key, agents=CALLERS, workers=1)
        [two_rate] = b.best_of(b.load(two.target, "authorize", world))
    b.emit("authorize_per_s_2_processes", two_rate.rate, "authorizations/s", base.rate,
           two_rate.rate / base.rate,
           note="broker serve --processes 2; the 2 client processes share the same 2 cores, "
                "so the servers get no more CPU than one process had")


def fig_usage(b: Bench) -> None:
    """usage_reports_per_s over 64 metering streams."""
    reports = reports_for(b, 30_000, CALLERS)
    with EchoServer(b.workdir, "echo-stream") as echo, b.broker("usage") as broker:
        world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4)
        base, usage = b.best_of(
            b.load(echo.target, "usage", {"echo": True, "reports": reports}),
            b.load(broker.target, "usage", {**world, "reports": reports}))
    b.emit("usage_reports_per_s", usage.rate, "reports/s", base.rate, usage.rate / base.rate,
           target=">= 0.35", p99_ms=_round(usage.percentile(99)),
           note="64 metering streams, each report signed by the worker (Ed25519) and "
                "acknowledged after its group commit; baseline: bare grpc.aio bidi echo")


def fig_usage_batched(b: Bench) -> None:
    """usage_reports_per_s_batched: 64 sessions, 8 per MeterWorker message (issue 21)."""
    per, sessions = 8, 64
    callers = sessions // per
    reports = reports_for(b, 30_000, CALLERS)
    batches = reports_for(b, 60_000 / per, callers)
    with EchoServer(b.workdir, "echo-batched") as echo, b.broker("batched") as broker:
        world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4)
        params = {**world, "reports": batches, "per_message": per}
        base, batched, pipelined = b.best_of(
            b.load(echo.target, "usage", {"echo": True, "reports": reports}),
            b.load(broker.target, "usage_batched", params, callers=callers),
            b.load(broker.target, "usage_batched", {**params, "in_flight": 2},
                   callers=callers))
    rate = pipelined.rate * per
    b.emit("usage_reports_per_s_batched_2_in_flight", rate, "reports/s", base.rate,
           rate / base.rate, p99_ms=_round(pipelined.percentile(99)),
           note="as usage_reports_per_s_batched with 2 batches outstanding per stream (the "
                "worker daemon does not wait for an answer before its next tick's batch; "
                "the broker starts a stream's next batch while one waits for its fsync); "
                "p99: between one answer and the next")
    rate = batched.rate * per
    b.emit("usage_reports_per_s_batched", rate, "reports/s", base.rate, rate / base.rate,
           target=">= 1.0", p99_ms=_round(batched.percentile(99)),
           note=f"{sessions} sessions, {per} per MeterWorker message on {callers} streams, "
                "each batch signed once (Ed25519) and acknowledged after its one group "
                "commit; baseline: bare grpc.aio bidi echo, 64 streams, messages/s")


def fig_job_cycles(b: Bench) -> None:
    """authorize -> redeem -> 10 usage reports -> settle."""
    with EchoServer(b.workdir, "echo-jobs") as echo, b.broker("jobs") as broker:
        world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4,
                           gpu_second_price=1_000)
        base, jobs = b.best_of(b.load(echo.target, "job_cycle", {"echo": True}),
                               b.load(broker.target, "job_cycle", world))
    b.emit("job_cycles_per_s", jobs.rate, "jobs/s", base.rate, jobs.rate / base.rate,
           p99_ms=_round(jobs.percentile(99)),
           note="64 callers, each: Authorize, then a metering stream: open (redeem), 10 "
                "signed usage reports, finish (settle, signed receipt); baseline: the same "
                "calls and messages against the echo server")


def fig_stop_latency(b: Bench) -> None:
    """From the usage report that would exhaust the hold to STOP at the worker."""
    trial = {"budget": 1_500, "pace_ms": 20, "report_interval_ms": 1_000}
    duration = b.settings.stop_duration_s
    with EchoServer(b.workdir, "echo-stop") as echo, b.broker("stop") as broker:
        world = make_world(broker.target, broker.admin_key, agents=16, workers=2,
                           gpu_second_price=1_000)
        stops = checked(harness.run(b.load(broker.target, "stop_trial", {**world, **trial},
                                           callers=16, processes=1, duration_s=duration)),
                        "stop_trial")
        base = checked(harness.run(b.load(echo.target, "echo_paced", {"echo": True},
                                          callers=16, processes=1, duration_s=duration,
                                          pace_s=0.02)), "echo_paced")
    latencies = [s["stop_ms"] for s in stops.samples]
    overspend = max(s["overspend"] for s in stops.samples)
    over_hold = [s for s in stops.samples if s["charged"] > s["held"]]
    if over_hold:
        raise RuntimeError(f"charged above the hold: {over_hold[:3]}")
    note = (f"{len(latencies)} holds run to STOP, 16 at a time, a report every 20 ms; "
            "baseline: a message echoed on a bare bidi stream at the same pace")
    for q in (50, 99):
        value, ref = stops.percentile(q, latencies), base.percentile(q)
        b.emit(f"stop_latency_ms_p{q}", value, "ms", ref, value / ref,
               **({"target": "< 5"} if q == 99 else {}), note=note)
    b.emit("overspend", overspend, "micro-credits", target="== 0",
           note="price of the usage at STOP plus one more report interval of GPU time "
                "(the most a worker runs after STOP), above the hold; worst of all trials")


def fig_sessions_open(b: Bench) -> None:
    """Thousands of idle metering sessions on one broker process."""
    n = b.settings.idle_sessions
    with b.broker("sessions") as broker:
        # Enough workers (each with its own key) to stay under the broker's cap of
        # streams per key (limits.meter_key_streams, 1,000): SESSIONS_PER_WORKER each.
        world = make_world(broker.target, broker.admin_key, agents=CALLERS,
                           workers=max(4, -(-n // SESSIONS_PER_WORKER)))
        reports = reports_for(b, 30_000, CALLERS)
        # Warm the code paths first, so that the memory difference is the sessions'.
        checked(harness.run(b.load(broker.target, "usage", {**world, "reports": reports},
                                   warmup_s=0, duration_s=1)), "warm-up")
        before = broker.memory_kb()
        idle = b.load(broker.target, "usage", {**world, "sample_every": 100},
                      callers=n, processes=4, channels_per_process=max(1, n // 4 // 40),
                      warmup_s=0, duration_s=30)
        with harness.started(idle) as holders:
            time.sleep(2)
            after = broker.memory_kb()
            busy = checked(harness.run(b.load(broker.target, "usage",
                                              {**world, "reports": reports},
                                              pace_s=BUSY_PACE_S)), "usage")
            sampled = checked(holders.go(), "idle sessions")
    per_session = (after["RssAnon"] - before["RssAnon"]) / n
    b.emit("sessions_open", n, "sessions",
           note=f"idle metering streams on one broker process; {sampled.ops} of them, "
                "sampled after the run, each still acknowledged a report")
    b.emit("session_memory_kb", per_session, "KB/session",
           note=f"broker RssAnon {before['RssAnon']} -> {after['RssAnon']} KB (VmRSS "
                f"{before['VmRSS']} -> {after['VmRSS']} KB, which adds mapped LMDB pages)")
    b.emit("usage_report_p99_ms_sessions_open", busy.percentile(99), "ms", target="< 50",
           reports_per_s=_round(busy.rate),
           note=f"64 busy metering streams, each reporting every {BUSY_PACE_S * 1000:.0f} ms, "
                f"while {n} idle sessions are open")


def fig_ledger_growth(b: Bench) -> None:
    """authorize_per_s after millions of journal entries / on an empty ledger."""
    entries = b.settings.ledger_entries
    big = b.broker("ledger-big")
    big.start().stop()  # initialise its data directory
    ledger_fill.check_template()
    started = time.perf_counter()
    ledger_fill.fill(big.data_dir, entries)
    fill_s = time.perf_counter() - started
    with big, b.broker("ledger-empty") as empty:
        worlds = [make_world(s.target, s.admin_key, agents=CALLERS, workers=1)
                  for s in (big, empty)]
        grown, fresh = b.best_of(b.load(big.target, "authorize", worlds[0]),
                                 b.load(empty.target, "authorize", worlds[1]),
                                 rounds=b.settings.rounds + 1)
    size_mb = sum(f.stat().st_size for f in (big.data_dir / "ledger").iterdir()) >> 20
    b.emit("ledger_growth", grown.rate, "authorizations/s", fresh.rate,
           grown.rate / fresh.rate, target=">= 0.8",
           note=f"authorize_per_s after {entries:,} journal entries ({size_mb} MB of LMDB, "
                f"written in {fill_s:.0f} s by bench/ledger_fill.py) / on an empty ledger")


def fig_fleet(b: Bench) -> None:
    """fleet: many workers, several running sessions each, one report per session per
    second, against one broker process (issue 21)."""
    f = b.settings.fleet
    offered = f.workers * f.sessions  # reports/s asked for (one per session per second)
    with b.broker("fleet") as broker:
        world = make_world(broker.target, broker.admin_key, agents=CALLERS,
                           workers=f.workers, gpu_second_price=1_000)
        load = b.load(broker.target, "fleet", {**world, "sessions": f.sessions,
                                               "hold_s": (10, 40), "interval_s": 1.0},
                      callers=f.workers, processes=f.processes,
                      channels_per_process=max(1, min(50, f.workers // f.processes)),
                      warmup_s=2, duration_s=f.seconds)
        with harness.started(load) as clients:
            load_before = os.getloadavg()
            cpu_before = broker.cpu_seconds()
            outcome = clients.go()
            cpu = broker.cpu_seconds() - cpu_before  # warm-up and wind-down included
            load_after = os.getloadavg()
    if outcome.errors:
        raise RuntimeError(f"fleet: {len(outcome.errors)} errors, e.g. {outcome.errors[:3]}")
    reports = sum(s["reports"] for s in outcome.samples)
    acks = [s["ack_ms"] for s in outcome.samples for _ in range(s["reports"])]
    stops = [ms for s in outcome.samples for ms in s["stop_ms"]]
    settled = [j for s in outcome.samples for j in s["settled"]]
    over_hold = [j for j in settled if j["charged"] > j["held"] or j["charged"] != j["owed"]]
    if over_hold:
        raise RuntimeError(f"fleet: receipts not as the usage and hold say: {over_hold[:3]}")
    rate = reports / outcome.seconds
    ran = (f"{f.workers} workers x {f.sessions} sessions in {f.processes} client processes, "
           f"{f.seconds:.0f} s; load average {load_before[0]:.1f} -> {load_after[0]:.1f} "
           f"on {len(os.sched_getaffinity(0))} CPUs")
    p99 = outcome.percentile(99, acks)
    late = outcome.percentile(99, [s["late_ms"] for s in outcome.samples])
    b.emit("fleet_reports_per_s", rate, "reports/s", offered, rate / offered,
           target=">= 1.0 of offered", ack_p99_ms=_round(p99), ack_p50_ms=_round(
               outcome.percentile(50, acks)), tick_late_p99_ms=_round(late),
           note=f"acknowledged reports/s against one per session per second (a session "
           f"being replaced after STOP skips a tick: finish and open share it); every "
           f"report sent was acknowledged; tick_late: how far a worker's tick started "
           f"after its schedule (behind when the broker does not keep up); {ran}")
    b.emit("fleet_ack_p99_ms", p99, "ms", target="< 100", note=ran)
    b.emit("fleet_stop_p99_ms", outcome.percentile(99, stops), "ms", target="< 10",
           stop_p50_ms=_round(outcome.percentile(50, stops)),
           note=f"{len(stops)} holds run out to STOP: from sending the report that "
                "triggered it to its arrival at the worker")
    b.emit("fleet_overspend", sum(j["overspend"] for j in settled), "micro-credits",
           target="== 0", sessions_settled=len(settled),
           note="GPU time run until STOP arrived, priced, above the hold, summed over the "
                "settled sessions; every receipt checked: charged == min(usage, hold)")
    b.emit("fleet_broker_cpu_us_per_report", cpu / max(1, reports) * 1e6, "us/report",
           note=f"broker process CPU (utime + stime, /proc/<pid>/stat) over the run, "
                f"warm-up included, per acknowledged report; {ran}")


PG_CHANNELS = 6  # per client process: 12 channels deal evenly over 1, 2 or 3 brokers


def fig_postgres(b: Bench) -> None:
    """authorize_per_s with the ledger on PostgreSQL: one broker against the LMDB broker
    in the same run, then 2 and 3 brokers on the one database; lock waits sampled
    throughout (issue 14)."""
    from bench.pg_watch import PgWatch
    from tests.pg_cluster import PgCluster

    # Durable like the LMDB broker it is held to: fsync and synchronous_commit on.
    cluster = PgCluster(durable=True, settings=(
        "shared_preload_libraries = 'pg_stat_statements'",)).start()
    span = b.settings.warmup_s + b.settings.duration_s
    try:
        url = cluster.create_database("bench")
        with psycopg_connect(url) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        keys = b.workdir / "pg-keys"  # the key directory the brokers share
        brokers = [b.broker(f"pg-{i}", data_dir=keys, store=url) for i in range(3)]
        with b.broker("pg-lmdb") as lmdb, brokers[0] as first:
            worlds = [make_world(s.target, s.admin_key, agents=CALLERS, workers=1)
                      for s in (lmdb, first)]
            # Both retry an UNAVAILABLE with the same request_id, as clients do (on
            # PostgreSQL: an op that conflicted with others 12 times); counted.
            worlds = [{**w, "retry_unavailable": True} for w in worlds]
            loads = [b.load(s.target, "authorize", w, channels_per_process=PG_CHANNELS)
                     for s, w in zip((lmdb, first), worlds, strict=True)]
            # Turn about, `rounds` times; the best of each; CPU over all of them (ops
            # counted as rate x run time, warm-up included).
            best: list[Outcome | None] = [None, None]
            cpu, ops = [0.0, 0.0], [0.0, 0.0]
            with PgWatch(cluster, url, statements=True) as one_watch:
                for _ in range(b.settings.rounds):
                    for i, server in enumerate((lmdb, first)):
                        before = server.cpu_seconds()
                        outcome = checked(harness.run(loads[i]), f"authorize on {server.name}")
                        cpu[i] += server.cpu_seconds() - before
                        ops[i] += outcome.rate * span
                        if best[i] is None or outcome.rate > best[i].rate:
                            best[i] = outcome
            base, one = best
            assert base is not None and one is not None
            top = one_watch.top_statements(max(1, int(ops[1])))
            statements = one_watch.statement_count() / max(1.0, ops[1])
            rates, watches = {1: one}, {1: one_watch}
            for n in (2, 3):
                brokers[n - 1].start()
                target = ",".join(s.target for s in brokers[:n])
                with PgWatch(cluster, url) as watch:
                    [rates[n]] = b.best_of(b.load(target, "authorize", worlds[1],
                                                  channels_per_process=PG_CHANNELS))
                watches[n] = watch
            for s in brokers[1:]:
                s.stop()
    finally:
        cluster.destroy()
    cpus = len(os.sched_getaffinity(0))
    b.emit("pg_authorize_per_s", one.rate, "authorizations/s", base.rate,
           one.rate / base.rate, target=">= 0.7", p99_ms=_round(one.percentile(99)),
           client_retries_per_op=_round(_retries(one), 4),
           lmdb_p99_ms=_round(base.percentile(99)),
           broker_cpu_us_per_op={"lmdb": _round(cpu[0] / max(1.0, ops[0]) * 1e6),
                                 "postgresql": _round(cpu[1] / max(1.0, ops[1]) * 1e6)},
           postgres_cpu_us_per_op=_round(one_watch.cpu_s / max(1.0, ops[1]) * 1e6),
           conflicts_per_op=_round(sum(one_watch.conflicts.values()) / max(1.0, ops[1]), 3),
           conflicts=dict(one_watch.conflicts.most_common(4)),
           statements_per_op=_round(statements),
           top_statements=top,
           note="1 broker process with its ledger on PostgreSQL (a throwaway cluster on "
                "this machine, fsync and synchronous_commit on, SERIALIZABLE) / the LMDB "
                "broker (fsync per group commit), measured in turn in the same run with "
                "the same load: 64 callers in 2 client processes, each its own wallet. "
                "CPU per op over every round (ops: rate x run time, warm-up included); "
                "conflicts: serialisation failures and deadlocks the server logged "
                "(each a try the store ran again), per op and by failed statement; "
                "client_retries: Authorize retried after UNAVAILABLE (12 conflicts), per op; "
                "statements_per_op and top_statements (server time per authorization): "
                "pg_stat_statements, the brokers' statements alone")
    for n in (2, 3):
        b.emit(f"pg_authorize_per_s_{n}_brokers", rates[n].rate, "authorizations/s",
               one.rate, rates[n].rate / one.rate, p99_ms=_round(rates[n].percentile(99)),
               client_retries_per_op=_round(_retries(rates[n]), 4),
               conflicts_per_op=_round(sum(watches[n].conflicts.values()) / max(
                   1.0, rates[n].rate * span * b.settings.rounds), 3),
               postgres_cpu_s=_round(watches[n].cpu_s),
               note=f"{n} broker processes on the one database, the callers' channels "
                    f"dealt evenly over them; baseline: 1 broker. Brokers, PostgreSQL and "
                    f"the 2 client processes all share this machine's {cpus} CPUs")
    waits = sum((w.lock_waits for w in watches.values()), Counter())
    rows = sum(w.row_waits for w in watches.values())
    b.emit("pg_lock_waits_unrelated_rows", rows, "sampled waits", target="== 0",
           samples=sum(w.samples for w in watches.values()),
           waits={f"{k} {r} {q}".strip(): n for (k, r, q), n in waits.most_common(8)},
           note="waits for a row lock (pg_locks not granted, locktype tuple or "
                "transactionid), sampled every 20 ms through the 1-, 2- and 3-broker "
                "runs; every caller has its own wallet, so any such wait is on a row "
                "that unrelated wallets share. `waits` lists every kind seen, advisory "
                "locks (single-runner work) too")


def _retries(outcome: Outcome) -> float:
    """Retries of an UNAVAILABLE per measured authorization."""
    return sum(s.get("retries", 0) for s in outcome.samples) / max(1, outcome.ops)


def psycopg_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


FIGURES = {"authorize": fig_authorize, "usage": fig_usage, "usage_batched": fig_usage_batched,
           "fleet": fig_fleet, "job_cycles": fig_job_cycles,
           "stop_latency": fig_stop_latency, "sessions_open": fig_sessions_open,
           "ledger_growth": fig_ledger_growth, "postgres": fig_postgres}


def profile(b: Bench, out: Path) -> None:
    """Where the time goes, for the authorize and the usage-report paths: CPU per op by
    thread (from /proc, no profiler) for the echo server and the broker, then the
    broker's event loop and writer thread under cProfile (thread CPU time)."""
    import pstats

    out.mkdir(parents=True, exist_ok=True)
    reports = reports_for(b, 30_000, CALLERS)
    summary = []
    for name in ("authorize", "usage"):
        with EchoServer(b.workdir, f"split-echo-{name}") as echo:
            summary.append(cpu_split(echo, b.load(echo.target, name, {
                "echo": True, "reports": reports}), f"{name}, echo"))
        with b.broker(f"split-{name}") as broker:
            world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4)
            summary.append(cpu_split(broker, b.load(broker.target, name, {
                **world, "reports": reports}), f"{name}, broker"))
        directory = out / name
        with b.broker(f"profile-{name}", profile=directory) as broker:
            world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4)
            outcome = checked(harness.run(b.load(broker.target, name,
                                                 {**world, "reports": reports})), name)
        summary.append(f"{name}, broker under cProfile: {outcome.rate:.0f}/s")
        for part in ("loop", "writer"):
            with open(directory / f"{part}.txt", "w") as text:
                stats = pstats.Stats(str(directory / f"{part}.prof"), stream=text)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    print(f"profiles: {out}/{{authorize,usage}}/{{loop,writer}}.txt")


def cpu_split(server, load: Load, label: str) -> str:
    """One line: throughput, and CPU microseconds (voluntary context switches) per op
    for each thread of the server. Per op over the whole run, warm-up included."""
    with harness.started(load) as clients:
        before, started = server.thread_cpu(), time.monotonic()
        outcome = checked(clients.go(), label)
        after, elapsed = server.thread_cpu(), time.monotonic() - started
    ops = outcome.rate * elapsed
    parts, total = [], 0.0
    for thread in sorted(after, key=lambda t: before.get(t, (0, 0))[0] - after[t][0]):
        cpu = after[thread][0] - before.get(thread, (0.0, 0))[0]
        switches = after[thread][1] - before.get(thread, (0.0, 0))[1]
        if cpu > 0:
            total += cpu
            parts.append(f"{thread} {cpu / ops * 1e6:.0f} us ({switches / ops:.1f} cs)")
    return (f"{label}: {outcome.rate:.0f}/s; CPU per op {total / ops * 1e6:.0f} us: "
            + ", ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES))
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--fleet", metavar="WORKERSxSESSIONSxSECONDS[xPROCESSES]",
                        help="the fleet figure's size (default 1000x4x60x4; --quick "
                             "100x4x15x2)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.fleet:
        workers, sessions, seconds, *procs = (int(n) for n in args.fleet.split("x"))
        settings.fleet = Fleet(workers, sessions, seconds, *procs)
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    b = Bench(settings, workdir)
    started = time.perf_counter()
    try:
        if args.profile:
            profile(b, args.profile.resolve())
            return 0
        for name in args.only or FIGURES:
            FIGURES[name](b)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    RESULTS.write_text("[\n" + ",\n".join(json.dumps(r) for r in b.results) + "\n]\n")
    print(f"{len(b.results)} figures in {time.perf_counter() - started:.0f} s on "
          f"{len(os.sched_getaffinity(0))} CPUs ({platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}); written to {RESULTS.relative_to(ROOT)}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
