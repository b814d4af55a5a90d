"""Every metric family the broker and the worker export is documented in
docs/operations.md, and each registry is private to its process object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from broker import metrics as broker_metrics
from broker.metrics import BrokerMetrics
from broker.store import MemoryStore
from worker.metrics import GpuCollector, WorkerMetrics

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
CPU = {"resource_class": "cpu", "meter": "cpu_time", "gpu_name": ""}


def exported_names(registry) -> set[str]:
    suffix = {"counter": "_total", "info": "_info"}
    return {m.name + suffix.get(m.type, "") for m in registry.collect()}


def test_every_family_is_documented():
    broker = BrokerMetrics()
    broker.watch_ledger(MemoryStore())
    broker.watch_tables(lambda: {"rate_buckets": (0, 10)})
    worker = WorkerMetrics(CPU, "cpu")
    worker.watch_cache(lambda: 0, 10)
    names = exported_names(broker.registry) | exported_names(worker.registry)
    assert {"grpc_server_handled_total", "broker_settlements_total", "broker_alerts_total",
            "worker_gpu_utilization_ratio", "worker_info", "broker_memory_table_entries",
            "worker_result_cache_entries"} <= names
    text = OPERATIONS.read_text()
    missing = sorted(n for n in names if f"| `{n}` |" not in text)
    assert not missing, f"not in the metrics tables of {OPERATIONS}: {missing}"


def test_alerts_count_per_process_object_not_globally():
    first, second = BrokerMetrics(), BrokerMetrics()
    broker_metrics.alert("spend_threshold")
    first.alert("approval_pending")
    assert first.registry.get_sample_value("broker_alerts_total",
                                           {"kind": "spend_threshold"}) == 1
    assert second.registry.get_sample_value("broker_alerts_total",
                                            {"kind": "spend_threshold"}) == 1
    assert first.registry.get_sample_value("broker_alerts_total",
                                           {"kind": "approval_pending"}) == 1
    assert second.registry.get_sample_value("broker_alerts_total",
                                            {"kind": "approval_pending"}) is None
    assert b"broker_alerts_total" in generate_latest(first.registry)


def test_a_worker_without_a_gpu_reports_no_utilisation():
    registry = WorkerMetrics(CPU, "cpu").registry
    assert registry.get_sample_value("worker_info", {"meter": "cpu_time", "resource_class": "cpu",
                                      "gpu_name": ""}) == 1
    text = generate_latest(registry).decode()
    assert "# TYPE worker_gpu_utilization_ratio gauge" in text
    assert "\nworker_gpu_utilization_ratio{" not in text


class FakeNvml:
    """Stands in for the pynvml module (a GPU this machine does not have)."""

    class NVMLError(Exception):
        pass

    def __init__(self, broken: bool = False):
        self.broken = broken

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle):
        return b"GPU-1234"

    def nvmlDeviceGetUtilizationRates(self, handle):
        if self.broken:
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=3 << 30, total=80 << 30)


def test_gpu_utilisation_and_memory_from_nvml():
    families = {m.name: m for m in GpuCollector(FakeNvml(), 0).collect()}
    [utilization] = families["worker_gpu_utilization_ratio"].samples
    assert utilization.labels == {"gpu": "GPU-1234"} and utilization.value == 0.87
    [memory] = families["worker_gpu_memory_used_bytes"].samples
    assert memory.value == 3 << 30


def test_an_nvml_error_gives_no_reading_rather_than_a_wrong_one():
    families = {m.name: m for m in GpuCollector(FakeNvml(broken=True), 0).collect()}
    assert families["worker_gpu_utilization_ratio"].samples == []
    assert families["worker_gpu_memory_used_bytes"].samples == []
