"""A real worker daemon (`python -m worker.cli serve`) for integration tests, next to
a BrokerProcess. Its stdout/stderr go to <state dir>.log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc
from common.files import write_secret
from common.targets import grpc_target
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .broker_process import ROOT, free_port, metrics_port_taken

SERVICE = "worker.v1.WorkerService"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: dict) -> str:
    """Flat keys first, then one [table] per dict value (enough for WorkerConfig)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for name, table in config.items():
        if isinstance(table, dict):
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class WorkerProcess:
    """`worker serve` against a broker. `start()` returns once the WorkerService reports
    SERVING and the worker is listed in the broker's offers (checked with `offers_key`,
    an agent or owner key). Its Prometheus endpoint is on a free port (`metrics_url`)."""

    def __init__(self, broker_target: str, state_dir: Path, api_key: str, offers_key: str, *,
                 port: int | None = None, config: dict | None = None, extra_args: tuple = ()):
        self.broker_target = broker_target
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.extra_args = extra_args
        self.offers_key = offers_key
        self.proc: subprocess.Popen | None = None
        self.worker_id = ""
        self.log_path = self.state_dir.with_name(self.state_dir.name + ".log")
        self.key_file = self.state_dir.with_name(self.state_dir.name + "-api-key")
        write_secret(self.key_file, api_key.encode())
        self.config_file: Path | None = None
        if config is not None:
            self.config_file = self.state_dir.with_name(self.state_dir.name + ".toml")
            self.config_file.write_text(to_toml(config))

    @property
    def usage_key_path(self) -> Path:
        return self.state_dir / "usage-key"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "worker.cli", "serve", "--broker", self.broker_target,
               "--listen", self.target, "--api-key-file", str(self.key_file),
               "--state-dir", str(self.state_dir),
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *self.extra_args]
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        return cmd

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if metrics_port_taken(self.log(), self.metrics_port):  # another port
                    self.metrics_port = free_port()
                    self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
                    return self.start(deadline - time.monotonic())
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if self._serving():
                self.worker_id = self.capabilities().worker_id
                if self.worker_id in self.offered_ids():
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"worker did not become ready:\n{self.log()}")

    def channel(self) -> grpc.Channel:
        """A channel to the worker's agent-facing server (TLS subclasses override it)."""
        return grpc.insecure_channel(self.target)

    def _serving(self) -> bool:
        try:
            with self.channel() as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=0.5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def capabilities(self) -> worker_pb.GetCapabilitiesResponse:
        with self.channel() as channel:
            return worker_grpc.WorkerServiceStub(channel).GetCapabilities(
                worker_pb.GetCapabilitiesRequest(), timeout=5)

    def offered_ids(self) -> set[str]:
        """Worker ids in the broker's ListOffers (empty when the broker is away)."""
        try:
            with grpc.insecure_channel(grpc_target(self.broker_target)) as channel:
                reply = registry_grpc.WorkerRegistryServiceStub(channel).ListOffers(
                    registry_pb.ListOffersRequest(), timeout=2,
                    metadata=(("authorization", f"Bearer {self.offers_key}"),))
                return {offer.worker_id for offer in reply.offers}
        except grpc.RpcError:
            return set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        """Send SIGTERM without waiting (the worker drains, deregisters and exits)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait for the exit status (SIGKILL if it hangs)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
