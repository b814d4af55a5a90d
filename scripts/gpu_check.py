"""`make gpu-check`: a real CUDA job through a real broker and worker.

    python scripts/gpu_check.py [--record docs/gpu-check.md]

Needs an NVIDIA GPU with CUDA. Exit 0: all checks passed; 1: a check failed; 2: no
usable GPU here. Prints a JSON summary (and appends it to --record).

1. The runtime checks in gpu_check_runtime.py (CUDA-event time vs wall time, NVML
   energy, cancellation latency, generate on CUDA).
2. Through broker and worker processes: a 3 s burn on CUDA is metered with CUDA
   events, its reported GPU time is within 10% of the burn's duration, and its
   NVML energy is read and non-zero.
3. STOP: a burn that would outlive its hold is cut off within one reporting
   interval of the STOP, and the charge never exceeds the hold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import torch  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from broker.client import BrokerClient  # noqa: E402
from common.files import write_secret  # noqa: E402
from worker.v1 import worker_service_pb2 as wpb  # noqa: E402
from worker.v1 import worker_service_pb2_grpc as wpb_grpc  # noqa: E402

BURN_MS = 3000
TOLERANCE = 0.10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{target} did not start")


def execute(endpoint: str, voucher: str, job: wpb.Job) -> tuple[list, float]:
    events, start = [], time.monotonic()
    with grpc.insecure_channel(endpoint) as channel:
        for event in wpb_grpc.WorkerServiceStub(channel).Execute(
                wpb.ExecuteRequest(voucher=voucher, job=job), timeout=300):
            events.append((time.monotonic() - start, event))
    return events, time.monotonic() - start


def through_broker_and_worker(tmp: Path) -> dict:
    broker_addr, worker_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([bin_dir / "broker", "serve", "--data-dir", str(tmp / "var"),
                               "--listen", broker_addr, "--demo"])]
    try:
        wait_serving(broker_addr)
        while not (tmp / "var" / "demo-credentials.json").exists():
            time.sleep(0.1)
        creds = json.loads((tmp / "var" / "demo-credentials.json").read_text())
        write_secret(tmp / "worker-key", creds["worker_api_key"].encode())
        (tmp / "worker.toml").write_text(
            "[prices]\ngpu_second_price = 10000\ncall_price = 0\n")
        procs.append(subprocess.Popen([
            bin_dir / "worker", "serve", "--config", str(tmp / "worker.toml"), "--broker",
            broker_addr, "--listen", worker_addr, "--api-key-file", str(tmp / "worker-key"),
            "--state-dir", str(tmp / "worker")]))
        wait_serving(worker_addr)
        with BrokerClient(broker_addr, creds["agent_api_key"]) as agent:
            while not agent.list_offers():
                time.sleep(0.2)
            offer = agent.list_offers()[0]
            # 1. Metered time and energy.
            auth = agent.authorize(1_000_000, worker_id=offer.worker_id, ttl_seconds=120)
            events, _ = execute(worker_addr, auth.voucher,
                                wpb.Job(burn=wpb.BurnJob(duration_ms=BURN_MS)))
            accepted = events[0][1].accepted
            result = events[-1][1].result
            usage = result.receipt.usage
            # 2. STOP: 60 s of work on a hold that pays for about 3 s.
            small = agent.authorize(30_000, worker_id=offer.worker_id, ttl_seconds=120)
            stop_events, stop_elapsed = execute(
                worker_addr, small.voucher, wpb.Job(burn=wpb.BurnJob(duration_ms=60_000)))
            stopped = stop_events[-1][1].result
            usage_times = [t for t, e in stop_events if e.WhichOneof("kind") == "usage"]
            interval_s = 1.0
            cutoff_s = stop_elapsed - (usage_times[-1] if usage_times else 0)
        return {
            "resource_class": offer.capabilities.resource_class,
            "meter": accepted.meter,
            "burn_ms": BURN_MS,
            "reported_gpu_ms": usage.gpu_ms,
            "gpu_time_error": abs(usage.gpu_ms - BURN_MS) / BURN_MS,
            "energy_mj": usage.energy_mj,
            "stop_status": wpb.JobStatus.Name(stopped.status),
            "stop_charged": stopped.receipt.charged,
            "stop_held": stopped.receipt.held,
            "stop_cutoff_after_last_report_s": round(cutoff_s, 3),
            "checks": {
                "meter_is_cuda_events": accepted.meter == "cuda_events",
                "gpu_time_within_10pct": abs(usage.gpu_ms - BURN_MS) / BURN_MS <= TOLERANCE,
                "energy_read_and_nonzero": usage.energy_mj > 0,
                "stopped_within_one_interval": stopped.status == wpb.JOB_STATUS_STOPPED
                and cutoff_s <= interval_s + 0.25,
                "charge_within_hold": stopped.receipt.charged <= stopped.receipt.held,
            },
        }
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", help="append the JSON summary to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no usable NVIDIA GPU (torch.cuda)"}))
        return 2
    runtime = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_check_runtime.py")],
                             capture_output=True, text=True, env=os.environ)
    summary: dict = {"gpu": torch.cuda.get_device_name(0),
                     "runtime_checks": json.loads(runtime.stdout or "{}"),
                     "runtime_exit": runtime.returncode}
    with tempfile.TemporaryDirectory() as tmp:
        summary["end_to_end"] = through_broker_and_worker(Path(tmp))
    summary["ok"] = runtime.returncode == 0 and all(summary["end_to_end"]["checks"].values())
    text = json.dumps(summary, indent=2)
    print(text)
    if args.record:
        with open(args.record, "a") as out:
            out.write(f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                      f"```json\n{text}\n```\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
