"""Capability probe and meters. Without a GPU (as here) the worker sells CPU time."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import torch

from worker import meters
from worker.cpu_shares import CpuShares
from worker.meters import CpuTimeMeter, Reading, make_meter, normalize_gpu_name, probe_capabilities
from worker.runtime import JobContext, JobSpec, Runtime

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


CPU_ONLY = {
    "resource_class": "cpu", "gpu_name": "", "gpu_memory_bytes": 0, "gpu_uuid": "",
    "driver_version": "", "meter": "cpu_time", "energy_supported": False,
}


def test_probe_on_this_machine():
    caps = probe_capabilities()
    if torch.cuda.is_available():
        assert caps["resource_class"].startswith("gpu.") and caps["meter"] == "cuda_events"
    else:
        assert caps == CPU_ONLY  # here: NVML's library is missing, which is not an error


def test_probe_without_nvml_offers_cpu_time(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(meters, "_nvml", lambda: None)
    assert probe_capabilities() == CPU_ONLY


@needs_cuda
def test_probe_with_a_gpu():
    caps = probe_capabilities()
    assert caps["resource_class"].startswith("gpu.")
    assert caps["meter"] == "cuda_events"
    assert caps["gpu_memory_bytes"] > 0 and caps["gpu_uuid"].startswith(("GPU-", "MIG-"))


@pytest.mark.parametrize(("name", "normalized"), [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100"),
    ("NVIDIA A100-SXM4-40GB", "a100"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA RTX A6000", "rtxa6000"),
    ("NVIDIA", "unknown"),
])
def test_gpu_names_are_normalized(name: str, normalized: str):
    assert normalize_gpu_name(name) == normalized


def test_cpu_meter_increases_during_a_burn_and_never_decreases():
    meter = make_meter("cpu")
    assert meter.name == "cpu_time"
    meter.start()
    readings: list[Reading] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            readings.append(meter.read())
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    before = meter.read()
    cpu_before = time.process_time_ns()
    Runtime(device="cpu").run(JobSpec(kind="burn", duration_ms=300), JobContext())
    cpu_burnt_ms = (time.process_time_ns() - cpu_before) // 1_000_000
    done.set()
    poller.join()
    final = meter.stop()
    readings.append(final)
    # The burn used real CPU time (how much depends on the machine's load), and the meter saw
    # all of it.
    assert cpu_burnt_ms >= 30
    assert final.gpu_ms - before.gpu_ms >= cpu_burnt_ms
    assert all(a.gpu_ms <= b.gpu_ms for a, b in zip(readings, readings[1:], strict=False))
    assert final.energy_mj == 0 and final.utilization_pct is None
    assert meter.read() == final == meter.stop()  # frozen once stopped


def test_cpu_meter_clamps_a_clock_that_goes_back():
    clock = iter([0, 1_000_000_000, 3_000_000_000, 2_000_000_000, 2_500_000_000])
    meter = CpuTimeMeter(CpuShares(process_ns=lambda: next(clock), thread_clock=lambda: None))
    meter.start()
    assert [meter.read().gpu_ms, meter.read().gpu_ms, meter.stop().gpu_ms] == [2000, 2000, 2000]


def test_the_process_time_is_shared_out_by_each_jobs_thread_time():
    """Jobs that run at once split each stretch of process time by their own threads'
    CPU time; one alone gets all of it, and none runs: an even split."""
    process = {"ns": 0}
    threads = {"a": 0, "b": 0}
    joining = iter(["a", "b"])
    shares = CpuShares(process_ns=lambda: process["ns"], clock_ns=lambda clock: threads[clock],
                       thread_clock=lambda: next(joining))
    ms = 1_000_000

    def run(process_ms: int, **thread_ms: int) -> None:
        process["ns"] += process_ms * ms
        for name, used in thread_ms.items():
            threads[name] += used * ms

    a = shares.join()
    run(100, a=90)
    b = shares.join()  # the 100 ms before B joined are all A's
    run(400, a=150, b=50)  # torch's pool threads and the worker's own: shared 3:1
    assert (shares.read(a), shares.read(b)) == (400 * ms, 100 * ms)
    run(40)  # neither job's thread ran: evenly
    assert (shares.read(a), shares.read(b)) == (420 * ms, 120 * ms)
    assert shares.leave(a) == 420 * ms
    run(60, a=60, b=30)  # A has left: B alone gets the stretch
    assert (shares.read(a), shares.leave(b), shares.leave(b)) == (420 * ms, 180 * ms, 180 * ms)


def test_two_jobs_at_once_are_not_billed_for_each_other():
    """Two burns at once in one process: together they are billed no more than the
    process's CPU time, and each about its own half (issue 18, item 2: each used to be
    billed the whole process's time)."""
    readings: dict[str, Reading] = {}
    barrier = threading.Barrier(2)

    def job(name: str) -> None:
        meter, runtime = make_meter("cpu"), Runtime(device="cpu")
        barrier.wait()
        meter.start()  # in the job's thread, as the worker does
        runtime.run(JobSpec(kind="burn", flops=60 * 2 * 512**3), JobContext())
        readings[name] = meter.stop()

    before = time.process_time_ns()
    jobs = [threading.Thread(target=job, args=(name,)) for name in ("a", "b")]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join()
    process_ms = (time.process_time_ns() - before) // 1_000_000
    a, b = readings["a"].gpu_ms, readings["b"].gpu_ms
    assert a + b <= process_ms
    assert a + b >= process_ms // 2  # (the rest: starting threads, torch's set-up)
    assert min(a, b) >= (a + b) // 5  # the same work: neither gets (almost) all of it


def test_a_meter_must_be_started():
    with pytest.raises(RuntimeError):
        CpuTimeMeter().read()


def test_cuda_meter_needs_cuda(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError):
        make_meter("cuda")


@needs_cuda
def test_cuda_meter_counts_gpu_time_during_a_burn():
    meter = make_meter("cuda")
    assert meter.name == "cuda_events"
    meter.start()
    first = meter.read()
    Runtime(device="cuda").run(JobSpec(kind="burn", duration_ms=300), JobContext())
    final = meter.stop()
    assert final.gpu_ms - first.gpu_ms >= 250
    assert final.energy_mj >= first.energy_mj


class FakeNvml:
    """Enough of pynvml for the CUDA meter: an energy counter and unsupported utilisation."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
        pass

    def __init__(self, energy: list[int]):
        self.energy = iter(energy)
        self.shutdowns = 0

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return f"gpu{index}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:  # noqa: N802
        return next(self.energy)

    def nvmlDeviceGetUtilizationRates(self, handle: str):  # noqa: N802
        raise self.NVMLError_NotSupported()

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1


def test_cuda_meter_logic_with_fake_events_and_nvml(monkeypatch: pytest.MonkeyPatch):
    """The CUDA meter's arithmetic, run on any machine: event times and energy deltas,
    clamped so that a counter glitch never lowers a reading."""
    clock = iter([0.0, 40.0, 90.0, 120.0])

    class FakeEvent:
        def __init__(self, enable_timing: bool):
            assert enable_timing

        def record(self, stream: object) -> None:
            self.at = next(clock)

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, other: FakeEvent) -> float:
            return other.at - self.at

    nvml = FakeNvml(energy=[5_000, 6_500, 6_000, 9_000])
    monkeypatch.setattr(meters, "_nvml", lambda: nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "default_stream", lambda index: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: (_ for _ in ()).throw(RuntimeError("no uuid")))
    meter = make_meter("cuda:0")
    assert meter.name == "cuda_events"
    meter.start()
    assert meter.read() == Reading(gpu_ms=40, energy_mj=1_500, utilization_pct=None)
    assert meter.read() == Reading(gpu_ms=90, energy_mj=1_500, utilization_pct=None)
    assert meter.stop() == Reading(gpu_ms=120, energy_mj=4_000, utilization_pct=None)
    assert meter.read().gpu_ms == 120 and nvml.shutdowns == 1
