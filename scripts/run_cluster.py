"""`make cluster`: a throwaway PostgreSQL on a Unix socket, three brokers sharing it
(one key directory they all mount) and one local worker that knows all three. Ctrl-C
(or SIGTERM) stops them in order: the worker (it drains and deregisters), the brokers,
then the database, whose files are removed (it runs with fsync off: a demo, not a
ledger to keep)."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/pg_cluster.py: the same throwaway cluster as the tests

from common.files import write_secret  # noqa: E402
from tests.pg_cluster import PgCluster, PgClusterError  # noqa: E402


def wait_for(path: Path, broker: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if broker.poll() is not None:
            sys.exit(f"a broker exited with {broker.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.1)


def wait_serving(target: str, broker: subprocess.Popen, timeout: float = 60.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while True:
        if broker.poll() is not None:
            sys.exit(f"the broker on {target} exited with {broker.returncode}")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for the broker on {target}")
        time.sleep(0.2)


def stop_in_order(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="var",
                        help="the key directory every broker mounts (demo credentials too)")
    parser.add_argument("--listen", default="127.0.0.1:50051,127.0.0.1:50061,127.0.0.1:50071",
                        help="the brokers' addresses, comma-separated")
    parser.add_argument("--metrics-listen",
                        default="127.0.0.1:9464,127.0.0.1:9474,127.0.0.1:9484",
                        help="the brokers' metrics addresses, comma-separated")
    parser.add_argument("--worker-listen", default="127.0.0.1:50052")
    parser.add_argument("--worker-metrics-listen", default="127.0.0.1:9465")
    args = parser.parse_args()
    listens = args.listen.split(",")
    metrics = args.metrics_listen.split(",")
    if len(metrics) != len(listens):
        sys.exit("--metrics-listen needs one address per broker in --listen")
    data = Path(args.data_dir)
    if (data / "ledger").exists():
        # `make run`'s: its admin key and demo credentials must not be replaced.
        sys.exit(f"{data} holds an LMDB ledger (`make run`'s); move it aside or give "
                 f"`make cluster` another directory (DATA=var-cluster)")
    data.mkdir(parents=True, exist_ok=True)
    # The database is new on every run: credentials from an earlier one name nothing.
    for stale in (data / "demo-credentials.json", data / "admin.key"):
        stale.unlink(missing_ok=True)
    bin_dir = Path(sys.executable).parent
    brokers: list[subprocess.Popen] = []
    worker = None
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    # Before anything starts: Ctrl-C during start-up still stops what started.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        database = PgCluster().start()
    except PgClusterError as error:
        sys.exit(f"PostgreSQL: {error}")
    print(f"PostgreSQL: on a Unix socket in {database.root} (removed at exit)", flush=True)
    try:
        url = database.create_database("broker")
        # One at a time: the first initialises the database and writes the demo tenant.
        for listen, metrics_listen in zip(listens, metrics, strict=True):
            if stopping:
                return 0
            broker = subprocess.Popen(
                [bin_dir / "broker", "serve", "--data-dir", str(data), "--store", url,
                 "--listen", listen, "--metrics-listen", metrics_listen, "--demo"],
                start_new_session=True)
            brokers.append(broker)
            wait_for(data / "demo-credentials.json", broker)
            wait_serving(listen, broker)
        credentials = json.loads((data / "demo-credentials.json").read_text())
        key_file = data / "worker" / "api-key"
        write_secret(key_file, credentials["worker_api_key"].encode())
        worker = subprocess.Popen(
            [bin_dir / "worker", "serve", "--broker", ",".join(listens),
             "--listen", args.worker_listen, "--api-key-file", str(key_file),
             "--state-dir", str(data / "worker"),
             "--metrics-listen", args.worker_metrics_listen],
            start_new_session=True)
        print(f"brokers: {', '.join(listens)}; worker: {args.worker_listen}", flush=True)
        print(f"For the README walkthrough, in another shell: export LISTEN={listens[0]} "
              f"WORKER_LISTEN={args.worker_listen} DATA={data}", flush=True)
        # A broker that dies (kill -9 one to try it) leaves the others serving.
        while (not stopping and worker.poll() is None
               and any(b.poll() is None for b in brokers)):
            time.sleep(0.2)
    finally:
        # The worker first, so it can settle running jobs and deregister; the database last.
        stop_in_order([p for p in (worker, *brokers) if p is not None])
        database.destroy()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
