"""Prometheus metrics of a worker process (docs/operations.md lists every family).

A dedicated CollectorRegistry per `WorkerMetrics`. RPC metrics come from the same
interceptor as the broker's; jobs, usage reports, device time and energy are counted
by the job runner (worker/execution.py, worker/metered_job.py); GPU utilisation is read
from NVML when scraped, on a worker whose device is a CUDA GPU (absent otherwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.metrics import RpcMetrics

from .meters import Reading, _nvml, _nvml_handle


class GpuCollector(Collector):
    """Utilisation and memory of the worker's GPU, from NVML at scrape time."""

    def __init__(self, nvml: ModuleType | None, cuda_index: int):
        self._nvml = nvml
        self._handle: Any = None
        if nvml is not None:
            with contextlib.suppress(nvml.NVMLError):
                self._handle = _nvml_handle(nvml, cuda_index)

    def collect(self) -> Iterator[Metric]:
        utilization = GaugeMetricFamily(
            "worker_gpu_utilization_ratio", "Share of the last sample period in which a "
            "kernel ran on the GPU (NVML); absent without a GPU.", labels=["gpu"])
        memory = GaugeMetricFamily("worker_gpu_memory_used_bytes",
                                   "GPU memory in use (NVML); absent without a GPU.",
                                   labels=["gpu"])
        nvml, handle = self._nvml, self._handle
        if nvml is not None and handle is not None:
            with contextlib.suppress(nvml.NVMLError):
                uuid = nvml.nvmlDeviceGetUUID(handle)
                gpu = uuid.decode() if isinstance(uuid, bytes) else uuid
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                utilization.add_metric([gpu], rates.gpu / 100)
                memory.add_metric([gpu], nvml.nvmlDeviceGetMemoryInfo(handle).used)
        yield utilization
        yield memory


class WorkerMetrics:
    def __init__(self, capabilities: dict[str, Any], device: str):
        self.registry = r = CollectorRegistry()
        self.rpc = RpcMetrics(r)
        Info("worker", "What this worker sells and how it meters.", registry=r).info({
            "resource_class": capabilities["resource_class"], "meter": capabilities["meter"],
            "gpu_name": capabilities["gpu_name"]})
        self._jobs = Counter("worker_jobs", "Jobs that reached a result, by outcome "
                             "(completed, stopped, failed, cancelled).", ["outcome"],
                             registry=r)
        self._running = Gauge("worker_jobs_running", "Jobs running now.", registry=r)
        self._cache_hits = Counter("worker_cache_hits", "Jobs answered from the result "
                                   "cache (charged one call).", registry=r)
        self._reports = Counter("worker_usage_reports", "Usage reports sent to the broker, by "
                                "result (acked; failed: the stream broke).", ["result"],
                                registry=r)
        self._device_seconds = Counter("worker_device_seconds", "Device time metered for "
                                       "jobs (CUDA events on a GPU, process CPU time "
                                       "otherwise).", ["meter"], registry=r)
        self._energy = Counter("worker_energy_joules", "Energy metered for jobs (NVML; 0 "
                               "where the meter cannot measure energy).", ["meter"],
                               registry=r)
        self._task_failures = Counter(
            "worker_background_task_failures", "Failures of background work, by task "
            "(heartbeat, register: a re-registration; each is retried).", ["task"],
            registry=r)
        nvml = _nvml() if device.startswith("cuda") else None
        index = int(device.partition(":")[2] or 0)
        r.register(GpuCollector(nvml, index))

    def watch_cache(self, size: Callable[[], int], limit: int) -> None:
        """The result cache's size (read when scraped) and bound."""
        Gauge("worker_result_cache_entries", "Results in the local result cache.",
              registry=self.registry).set_function(size)
        Gauge("worker_result_cache_limit", "Most results the cache keeps (the oldest are "
              "forgotten).", registry=self.registry).set(limit)

    def running(self) -> contextlib.AbstractContextManager:
        return self._running.track_inprogress()

    def job_done(self, outcome: str, meter: str, reading: Reading) -> None:
        self._jobs.labels(outcome).inc()
        self._device_seconds.labels(meter).inc(reading.gpu_ms / 1000)
        self._energy.labels(meter).inc(reading.energy_mj / 1000)

    def cache_hit(self) -> None:
        self._jobs.labels("completed").inc()
        self._cache_hits.inc()

    def task_failed(self, task: str) -> None:
        self._task_failures.labels(task).inc()

    def report(self, acked: bool) -> None:
        self._reports.labels("acked" if acked else "failed").inc()
