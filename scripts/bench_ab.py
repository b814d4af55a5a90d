"""A/B rounds: the bare echo and the brokers of two or more source trees, alternating on
the same client load, for the authorize and usage-report paths.

Why: this machine's speed drifts by tens of percent within minutes, so a figure from one
run and a figure from another compare the hours, not the code; only rounds that
alternate do (docs/performance.md, "Noise"). Prints each round's rate, and with --cpu
the server's CPU and voluntary context switches per op by thread (as `bench.py
--profile`), which drift less than rates.

    .venv/bin/python scripts/bench_ab.py base=../main-worktree new=. --rounds 3
    .venv/bin/python scripts/bench_ab.py new=. new-nosync=. --workloads authorize --cpu

NAME=PATH runs the broker from PATH (its own code; the client harness is this tree's). A
NAME ending in "-nosync" runs that broker without fsync.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402
from bench.world import BrokerServer, EchoServer, Server, make_world  # noqa: E402
from scripts.bench import CALLERS, CLIENT_PROCESSES, FULL, Bench, cpu_split, reports_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["authorize", "usage"],
                        choices=["authorize", "usage"])
    parser.add_argument("--callers", type=int, default=CALLERS)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured per round")
    parser.add_argument("--cpu", action="store_true", help="CPU per op by thread")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.trees)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        for workload in args.workloads:
            compare(workdir, workload, trees, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def compare(workdir: Path, workload: str, trees: dict[str, str],
            args: argparse.Namespace) -> None:
    reports = reports_for(Bench(FULL, workdir), 30_000, args.callers) if workload == "usage" else 0
    servers: dict[str, tuple[Server, dict]] = {}
    try:
        echo = EchoServer(workdir, f"echo-{workload}").start()
        servers["echo"] = (echo, {"echo": True, "reports": reports})
        for name, path in trees.items():
            broker = BrokerServer(workdir, f"{name}-{workload}", root=Path(path).resolve(),
                                  nosync=name.endswith("-nosync")).start()
            world = make_world(broker.target, broker.admin_key, agents=CALLERS, workers=4)
            servers[name] = (broker, {**world, "reports": reports})
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (server, params) in servers.items():
                load = harness.Load(target=server.target, workload=workload, params=params,
                                    warmup_s=1.0, duration_s=args.seconds,
                                    processes=CLIENT_PROCESSES, callers=args.callers)
                if args.cpu:
                    print(cpu_split(server, load, f"{workload} {name}"), flush=True)
                    continue
                outcome = harness.run(load)
                if outcome.errors:
                    raise RuntimeError(f"{name}: {outcome.errors[:3]}")
                rates[name].append(outcome.rate)
        if not args.cpu:
            best_echo = max(rates["echo"])
            print(f"{workload}: " + "  ".join(
                f"{name} {'/'.join(f'{r:.0f}' for r in runs)}"
                + ("" if name == "echo" else f" (best {max(runs) / best_echo:.3f} of echo)")
                for name, runs in rates.items()), flush=True)
    finally:
        for server, _ in servers.values():
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
