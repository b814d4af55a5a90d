"""What this machine can sell (`probe_capabilities`) and how a job's use is measured
(`make_meter`).

A meter reports cumulative usage since `start()`: device time in ms, energy in mJ (0 when
unsupported) and utilisation (None when unknown). Readings never decrease, because the
worker reports them to the broker as cumulative counters.

CUDA meter: CUDA events on the device's default stream. `read()` records an event and
waits for it, so the time is the span of the device's timeline from start to now,
including any gaps between kernels: the device is reserved for the job in between.
Energy comes from NVML's total energy counter, utilisation from NVML's sampled rates.

CPU meter: the job's share of this process's CPU time (all threads, shared out among the
jobs running at once by each job thread's own CPU time: worker/cpu_shares.py), reported
as `gpu_ms` so that one field serves both. A job alone is billed the process's CPU time,
including a little from the worker's own idle threads.

`start()` is called in the thread that runs the job, and `stop()` there too once the job
has returned (the CPU meter needs the job's thread; the CUDA meter does not mind).
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from . import cpu_shares
from .cpu_shares import CpuShares, Share


@dataclass(frozen=True)
class Reading:
    gpu_ms: int
    energy_mj: int = 0
    utilization_pct: int | None = None


class Meter(Protocol):
    name: str

    def start(self) -> None: ...

    def read(self) -> Reading: ...

    def stop(self) -> Reading: ...


def _nvml() -> ModuleType | None:
    """pynvml, initialised, or None when there is no NVIDIA driver or no bindings."""
    try:
        with warnings.catch_warnings():
            # The "pynvml" wheel is a shim over nvidia-ml-py that warns on import.
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_handle(nvml: ModuleType, cuda_index: int) -> Any:
    """The NVML handle of torch's CUDA device `cuda_index`. The indexes differ when
    CUDA_VISIBLE_DEVICES is set, so match by UUID where torch knows it."""
    try:
        import torch

        if torch.cuda.is_available():
            uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-")
                                                  else f"GPU-{uuid}")
    except Exception:
        pass
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


_FORM_FACTOR = re.compile(r"^(\d+gb|sxm\d*|pcie|hbm\d*e?|nvl|mig.*)$")
_VENDOR = {"nvidia", "geforce", "tesla", "quadro"}


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-40GB' -> 'a100',
    'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    parts: list[str] = []
    for word in re.split(r"[\s\-_/]+", name.lower()):
        word = re.sub(r"[^a-z0-9]", "", word)
        if not word or word in _VENDOR:
            continue
        if _FORM_FACTOR.match(word):
            break
        parts.append(word)
    return "".join(parts) or "unknown"


def probe_capabilities(cuda_index: int = 0) -> dict:
    """What the worker offers. A GPU resource class needs both NVML to see the GPU and
    torch to be able to use it; otherwise the worker sells CPU time (GPU fields are still
    filled in when NVML sees a GPU). Never raises for a missing driver or library."""
    import torch

    caps: dict[str, Any] = {
        "resource_class": "cpu", "gpu_name": "", "gpu_memory_bytes": 0, "gpu_uuid": "",
        "driver_version": "", "meter": "cpu_time", "energy_supported": False,
    }
    nvml = _nvml()
    if nvml is None:
        return caps
    try:
        if nvml.nvmlDeviceGetCount() <= cuda_index:
            return caps
        handle = _nvml_handle(nvml, cuda_index)
        caps["gpu_name"] = _text(nvml.nvmlDeviceGetName(handle))
        caps["gpu_memory_bytes"] = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        caps["gpu_uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
        caps["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            caps["energy_supported"] = True
        if torch.cuda.is_available():
            caps["resource_class"] = f"gpu.{normalize_gpu_name(caps['gpu_name'])}"
            caps["meter"] = "cuda_events"
    except nvml.NVMLError:
        pass
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return caps


class _Monotonic:
    """Clamps readings so that no field ever goes down, and freezes them after stop()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = Reading(0, 0, None)
        self._final: Reading | None = None

    def update(self, reading: Reading) -> Reading:
        with self._lock:
            if self._final is not None:
                return self._final
            last = self._last
            self._last = Reading(max(last.gpu_ms, reading.gpu_ms),
                                 max(last.energy_mj, reading.energy_mj),
                                 reading.utilization_pct)
            return self._last

    def finish(self, reading: Reading) -> Reading:
        final = self.update(reading)
        with self._lock:
            self._final = final
        return final

    @property
    def stopped(self) -> Reading | None:
        return self._final


class CpuTimeMeter:
    """This job's share of the process's CPU time (worker/cpu_shares.py). `start()` must
    be called in the thread that runs the job: that thread's CPU time is how the
    process's time is shared out among jobs that run at once."""

    name = "cpu_time"

    def __init__(self, shares: CpuShares | None = None) -> None:
        self._shares = shares or cpu_shares.PROCESS
        self._share: Share | None = None
        self._clamp = _Monotonic()

    def start(self) -> None:
        self._share = self._shares.join()

    def _sample(self, final: bool = False) -> Reading:
        if self._share is None:
            raise RuntimeError("meter not started")
        ns = self._shares.leave(self._share) if final else self._shares.read(self._share)
        return Reading(gpu_ms=ns // 1_000_000)

    def read(self) -> Reading:
        return self._clamp.stopped or self._clamp.update(self._sample())

    def stop(self) -> Reading:
        return self._clamp.stopped or self._clamp.finish(self._sample(final=True))


class CudaEventMeter:
    name = "cuda_events"

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)
        if self._device.type != "cuda":
            raise ValueError(f"not a CUDA device: {device}")
        self._index = self._device.index if self._device.index is not None else 0
        self._start_event: Any = None
        self._nvml: ModuleType | None = None
        self._handle: Any = None
        self._energy_start: int | None = None
        self._utilization = True
        self._clamp = _Monotonic()

    def start(self) -> None:
        torch = self._torch
        with torch.cuda.device(self._index):
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record(torch.cuda.default_stream(self._index))
        self._nvml = _nvml()
        if self._nvml is not None:
            try:
                self._handle = _nvml_handle(self._nvml, self._index)
                self._energy_start = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            except self._nvml.NVMLError:
                self._energy_start = None  # NotSupported (e.g. MIG, older GPUs)

    def _sample(self) -> Reading:
        torch = self._torch
        if self._start_event is None:
            raise RuntimeError("meter not started")
        with torch.cuda.device(self._index):
            now = torch.cuda.Event(enable_timing=True)
            now.record(torch.cuda.default_stream(self._index))
            now.synchronize()
            gpu_ms = int(self._start_event.elapsed_time(now))
        return Reading(gpu_ms, self._energy_mj(), self._utilization_pct())

    def _energy_mj(self) -> int:
        if self._nvml is None or self._energy_start is None:
            return 0
        try:
            return max(0, self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                       - self._energy_start)
        except self._nvml.NVMLError:
            return 0  # the clamp keeps the last good value

    def _utilization_pct(self) -> int | None:
        if self._nvml is None or self._handle is None or not self._utilization:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except self._nvml.NVMLError_NotSupported:
            self._utilization = False
        except self._nvml.NVMLError:
            pass
        return None

    def read(self) -> Reading:
        return self._clamp.stopped or self._clamp.update(self._sample())

    def stop(self) -> Reading:
        if self._clamp.stopped:
            return self._clamp.stopped
        final = self._clamp.finish(self._sample())
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
        return final


def make_meter(device: str) -> Meter:
    """The meter for a runtime device: CUDA events for "cuda[:n]", CPU time otherwise."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("CUDA meter asked for, but CUDA is not available")
        return CudaEventMeter(device)
    return CpuTimeMeter()
