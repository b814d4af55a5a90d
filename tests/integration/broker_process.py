"""A real broker process on a real LMDB directory, for integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def metrics_port_taken(log: str, port: int) -> bool:
    """Whether a broker or worker exited because free_port() raced another process for
    its metrics port (then start it again on another)."""
    return f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting to be reaped by
    whoever inherited them do not count). Linux: reads /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


class BrokerProcess:
    """`broker serve --demo` in a subprocess; stdout/stderr go to <data dir>.log. Its
    Prometheus endpoint is on a free port (`metrics_url`), not the default 9464."""

    def __init__(self, data_dir: Path, port: int | None = None, extra_args: tuple = (),
                 own_group: bool = False, launcher: tuple = ()):
        self.data_dir = Path(data_dir)
        # Its own process group, so that kill() takes every process of a prefork broker
        # at once (as a power cut or an OOM kill of its cgroup would).
        self.own_group = own_group
        self.launcher = launcher  # a command the broker's command line is appended to
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    def start(self, timeout: float = 20.0) -> BrokerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*self.launcher, sys.executable, "-m", "broker.cli", "serve",
             "--data-dir", str(self.data_dir), "--listen", self.target,
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--demo", *self.extra_args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            process_group=0 if self.own_group else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if metrics_port_taken(self.log(), self.metrics_port):  # another port
                    self.metrics_port = free_port()
                    self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
                    return self.start(deadline - time.monotonic())
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if self._serving() and self.credentials_path.exists():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"broker did not become ready:\n{self.log()}")

    def _serving(self) -> bool:
        try:
            with grpc.insecure_channel(self.target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "demo-credentials.json"

    @property
    def credentials(self) -> dict:
        return json.loads(self.credentials_path.read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a power cut for the process (for the whole
        process group with `own_group`: a prefork broker's server processes too)."""
        assert self.proc is not None
        if self.own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.own_group:  # the server processes die with their group, not with the parent
            deadline = time.monotonic() + 10
            while _group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()
