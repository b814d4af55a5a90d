"""`make run`: the broker (with demo data), one local worker and the web console,
together. Ctrl-C (or SIGTERM) stops them all: the worker drains and deregisters first."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.files import write_secret


def wait_for(path: Path, broker: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if broker.poll() is not None:
            sys.exit(f"the broker exited with {broker.returncode}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {path}")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="var")
    parser.add_argument("--listen", default="127.0.0.1:50051")
    parser.add_argument("--worker-listen", default="127.0.0.1:50052")
    parser.add_argument("--console-listen", default="127.0.0.1:8080")
    parser.add_argument("--metrics-listen", default="127.0.0.1:9464")
    parser.add_argument("--worker-metrics-listen", default="127.0.0.1:9465")
    args = parser.parse_args()
    data = Path(args.data_dir)
    bin_dir = Path(sys.executable).parent
    broker = subprocess.Popen([bin_dir / "broker", "serve", "--data-dir", str(data),
                               "--listen", args.listen, "--metrics-listen", args.metrics_listen,
                               "--demo"], start_new_session=True)
    wait_for(data / "demo-credentials.json", broker)
    credentials = json.loads((data / "demo-credentials.json").read_text())
    key_file = data / "worker" / "api-key"
    write_secret(key_file, credentials["worker_api_key"].encode())
    worker = subprocess.Popen([bin_dir / "worker", "serve", "--broker", args.listen,
                               "--listen", args.worker_listen, "--api-key-file", str(key_file),
                               "--state-dir", str(data / "worker"),
                               "--metrics-listen", args.worker_metrics_listen],
                              start_new_session=True)
    console = subprocess.Popen([bin_dir / "broker", "console", "--broker", args.listen,
                                "--listen", args.console_listen], start_new_session=True)
    print(f"console: http://{args.console_listen}/ (sign in with the key that "
          f"`.venv/bin/broker credentials --data-dir {data} owner` prints)", flush=True)
    print(f"For the README walkthrough, in another shell: export LISTEN={args.listen} "
          f"WORKER_LISTEN={args.worker_listen} DATA={data}", flush=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in (broker, worker, console)):
        time.sleep(0.2)
    # The worker first, so it can settle running jobs and deregister.
    for process in (console, worker, broker):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
