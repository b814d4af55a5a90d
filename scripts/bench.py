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


FULL = Settings(warmup_s=2, duration_s=8, rounds=2, idle_sessions=10_000,
                ledger_entries=5_000_000, stop_duration_s=12)
QUICK = Settings(warmup_s=0.5, duration_s=2, rounds=1, idle_sessions=1_000,
                 ledger_entries=200_000, stop_duration_s=3)


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
           target=">= 0.6", p99_ms=_round(one.percentile(99)),
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
           target=">= 0.6", p99_ms=_round(usage.percentile(99)),
           note="64 metering streams, each report signed by the worker (Ed25519) and "
                "acknowledged after its group commit; baseline: bare grpc.aio bidi echo")


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


FIGURES = {"authorize": fig_authorize, "usage": fig_usage, "job_cycles": fig_job_cycles,
           "stop_latency": fig_stop_latency, "sessions_open": fig_sessions_open,
           "ledger_growth": fig_ledger_growth}


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
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
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
