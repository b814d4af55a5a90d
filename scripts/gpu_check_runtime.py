"""Check the job runtime and the CUDA meter on a machine with an NVIDIA GPU.

    python scripts/gpu_check_runtime.py        # prints a JSON summary

Exit 0: every check passed. 1: a check failed. 2: no usable NVIDIA GPU here.

Checks: a CUDA burn metered with CUDA events gives a GPU time within 10% of the wall time
of the work; NVML's energy counter is readable and grows during it; meter readings never
decrease; STOP (the cancel event) ends a burn and a generate within 100 ms; generate on
CUDA streams and counts every token and is deterministic.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from worker.meters import Reading, make_meter, probe_capabilities  # noqa: E402
from worker.runtime import Cancelled, JobContext, JobSpec, Runtime  # noqa: E402

BURN_MS = 3000
CANCEL_LIMIT_S = 0.1
TIME_TOLERANCE = 0.10


def metered_burn(runtime: Runtime, caps: dict) -> dict:
    meter = make_meter(runtime.device)
    readings: list[Reading] = []
    done = threading.Event()

    def poll() -> None:  # the worker reads its meter from another thread, like this
        while not done.is_set():
            readings.append(meter.read())
            time.sleep(0.1)

    meter.start()
    start = time.perf_counter()
    poller = threading.Thread(target=poll)
    poller.start()
    result = runtime.run(JobSpec(kind="burn", duration_ms=BURN_MS), JobContext())
    done.set()
    poller.join()
    final = meter.stop()
    wall_ms = (time.perf_counter() - start) * 1000
    readings.append(final)
    monotonic = all(a.gpu_ms <= b.gpu_ms and a.energy_mj <= b.energy_mj
                    for a, b in zip(readings, readings[1:], strict=False))
    time_ok = abs(final.gpu_ms - wall_ms) <= TIME_TOLERANCE * wall_ms
    energy_ok = caps["energy_supported"] and final.energy_mj > 0
    utilizations = [r.utilization_pct for r in readings if r.utilization_pct is not None]
    return {
        "ok": time_ok and energy_ok and monotonic,
        "meter": meter.name,
        "wall_ms": round(wall_ms, 1),
        "gpu_ms": final.gpu_ms,
        "gpu_time_within_10pct": time_ok,
        "energy_mj": final.energy_mj,
        "energy_ok": energy_ok,
        "avg_power_w": round(final.energy_mj / max(final.gpu_ms, 1), 1),
        "max_utilization_pct": max(utilizations, default=None),
        "readings": len(readings),
        "monotonic": monotonic,
        "tflops": round(result["flops"] / max(final.gpu_ms, 1) / 1e9, 1),
        "burn": result,
    }


def cancel_latency(runtime: Runtime, spec: JobSpec, after_s: float) -> dict:
    ctx = JobContext()
    outcome: list[object] = []
    ended: list[float] = []

    def job() -> None:
        try:
            outcome.append(runtime.run(spec, ctx))
        except Exception as error:
            outcome.append(error)
        ended.append(time.perf_counter())

    thread = threading.Thread(target=job)
    thread.start()
    time.sleep(after_s)
    cancelled_at = time.perf_counter()
    ctx.cancel.set()
    thread.join(10)
    if thread.is_alive() or not ended:
        return {"ok": False, "error": "job did not stop within 10 s"}
    latency = ended[0] - cancelled_at
    was_cancelled = isinstance(outcome[0], Cancelled)
    return {"ok": was_cancelled and latency < CANCEL_LIMIT_S,
            "latency_ms": round(latency * 1000, 1),
            "outcome": type(outcome[0]).__name__, "output_tokens": ctx.output_tokens}


def generate_check(runtime: Runtime) -> dict:
    tokens: list[int] = []
    ctx = JobContext(on_output=lambda text, ids: tokens.extend(ids))
    spec = JobSpec(kind="generate", model="tiny-lm", prompt="GPU check", max_new_tokens=64,
                   temperature=0.8, seed=1)
    start = time.perf_counter()
    first = runtime.run(spec, ctx)
    seconds = time.perf_counter() - start
    again = runtime.run(spec, JobContext())
    counted = len(tokens) == ctx.output_tokens == first["output_tokens"] == 64
    deterministic = first["text"] == again["text"]
    greedy = JobSpec(kind="generate", model="tiny-lm", prompt="GPU check", max_new_tokens=16)
    matches_cpu = (runtime.run(greedy, JobContext())["text"]
                   == Runtime(device="cpu").run(greedy, JobContext())["text"])
    return {"ok": counted and deterministic, "tokens_counted": counted,
            "deterministic": deterministic, "tokens_per_s": round(64 / seconds, 1),
            "greedy_matches_cpu": matches_cpu}  # informational: numerics may differ


def main() -> int:
    caps = probe_capabilities()
    if not torch.cuda.is_available() or not caps["resource_class"].startswith("gpu."):
        print(json.dumps({"ok": False, "error": "no NVIDIA GPU usable here (needs NVML and "
                          "a CUDA build of torch)", "capabilities": caps}, indent=2))
        return 2
    runtime = Runtime(device="cuda")
    runtime.run(JobSpec(kind="burn", duration_ms=300), JobContext())  # warm up cuBLAS
    checks = {
        "metered_burn": metered_burn(runtime, caps),
        "cancel_burn": cancel_latency(runtime, JobSpec(kind="burn", duration_ms=30_000), 0.5),
        "cancel_generate": cancel_latency(
            runtime, JobSpec(kind="generate", model="tiny-lm", prompt="x",
                             max_new_tokens=4096), 0.5),
        "generate": generate_check(runtime),
    }
    ok = all(check["ok"] for check in checks.values())
    print(json.dumps({"ok": ok, "capabilities": caps, "torch": torch.__version__,
                      "checks": checks}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
