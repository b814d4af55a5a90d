"""The servers a figure runs against, and the tenants and workers it needs."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nacl.signing import SigningKey

from bench.echo import UNARY as ECHO_UNARY
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import admin_service_pb2_grpc as admin_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc
from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess (`python -m <module> ...`) with its log next to `workdir`."""

    module = ""

    def __init__(self, workdir: Path, name: str, *, root: Path = ROOT):
        self.workdir = workdir
        self.name = name
        self.root = root  # the source tree it runs from (scripts/bench_ab.py: another)
        self.target = f"127.0.0.1:{free_port()}"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return []

    def start(self) -> Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--listen", self.target, *self.args()],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def ready(self) -> bool:
        raise NotImplementedError

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and RssAnon (our own memory, without the mapped LMDB file) in KB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0])
        return fields

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server and its child processes so far."""
        total = 0.0
        for pid in (self.pid, *_children(self.pid)):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def thread_cpu(self) -> dict[str, tuple[float, int]]:
        """(CPU seconds, voluntary context switches) of each thread of the server
        (one process), keyed by OS thread name; the main thread is "event loop"."""
        out: dict[str, tuple[float, int]] = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            task = Path(f"/proc/{self.pid}/task/{tid}")
            try:
                stat = (task / "stat").read_text()
                status = (task / "status").read_text()
            except OSError:  # the thread ended
                continue
            name = "event loop" if int(tid) == self.pid else stat[stat.index("(") + 1:
                                                                  stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
            before = out.get(name, (0.0, 0))
            out[name] = (before[0] + cpu, before[1] + switches)
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EchoServer(Server):
    module = "bench.echo"

    def ready(self) -> bool:
        try:
            with grpc.insecure_channel(self.target) as channel:
                return channel.unary_unary(ECHO_UNARY)(b"x", timeout=0.5) == b"x"
        except grpc.RpcError:
            return False


class BrokerServer(Server):
    """`python -m bench.server`: the broker, one or more processes, fsync or not."""

    module = "bench.server"

    def __init__(self, workdir: Path, name: str, *, processes: int = 1, nosync: bool = False,
                 profile: Path | None = None, data_dir: Path | None = None,
                 store: str = "", root: Path = ROOT):
        super().__init__(workdir, name, root=root)
        self.data_dir = data_dir or workdir / f"{name}-data"
        self.processes, self.nosync, self.profile = processes, nosync, profile
        self.store = store  # a postgresql:// URL, or "" for LMDB in data_dir

    def args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir), "--processes", str(self.processes)]
        if self.store:
            args += ["--store", self.store]
        if self.nosync:
            args.append("--no-sync")
        if self.profile:
            args += ["--profile", str(self.profile)]
        return args

    def ready(self) -> bool:
        # Every server process says so (with SO_REUSEPORT a late one would get no load).
        if self.log().count("broker listening on") < self.processes:
            return False
        try:
            with grpc.insecure_channel(self.target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rid() -> str:
    return secrets.token_hex(8)


def make_world(target: str, admin_key: str, *, agents: int = 64, workers: int = 4,
               gpu_second_price: int = 1) -> dict[str, Any]:
    """An owner with `agents` funded wallets and agent keys, and a provider with
    `workers` registered workers, each with its own API key and usage signing key. The result is
    the `params` the workloads take."""
    with grpc.insecure_channel(target) as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        wallets = wallet_grpc.WalletServiceStub(channel)
        registry = registry_grpc.WorkerRegistryServiceStub(channel)
        md = (("authorization", f"Bearer {admin_key}"),)

        def key(**kwargs) -> str:
            return admin.CreateApiKey(admin_pb.CreateApiKeyRequest(request_id=_rid(), **kwargs),
                                      metadata=md).api_key

        owner = admin.CreateOwner(admin_pb.CreateOwnerRequest(
            request_id=_rid(), display_name="bench owner"), metadata=md)
        admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=_rid(), owner_id=owner.owner_id, amount=10**15), metadata=md)
        owner_md = (("authorization",
                     f"Bearer {key(role=admin_pb.ROLE_OWNER, owner_id=owner.owner_id)}"),)
        agent_keys = []
        for i in range(agents):
            wallet = wallets.CreateWallet(wallet_pb.CreateWalletRequest(
                request_id=_rid(), display_name=f"bench agent {i}", cap=10**13),
                metadata=owner_md).wallet
            wallets.FundWallet(wallet_pb.FundWalletRequest(
                request_id=_rid(), wallet_id=wallet.wallet_id, amount=10**12), metadata=owner_md)
            agent_keys.append(key(role=admin_pb.ROLE_AGENT, owner_id=owner.owner_id,
                                  wallet_id=wallet.wallet_id))
        provider = admin.CreateProvider(admin_pb.CreateProviderRequest(
            request_id=_rid(), display_name="bench provider"), metadata=md)
        # A worker API key each: the broker caps the streams of one key
        # (limits.meter_key_streams), and sessions_open holds thousands.
        worker_keys = []
        registered = []
        for _ in range(workers):
            worker_keys.append(key(role=admin_pb.ROLE_WORKER, provider_id=provider.provider_id))
            worker_md = (("authorization", f"Bearer {worker_keys[-1]}"),)
            signing = SigningKey.generate()
            reply = registry.RegisterWorker(registry_pb.RegisterWorkerRequest(
                request_id=_rid(), endpoint="127.0.0.1:7001",
                capabilities=registry_pb.Capabilities(resource_class="gpu.h100",
                                                      models=["tiny-lm"], meter="cpu_time"),
                prices=res_pb.PriceSheet(gpu_second_price=gpu_second_price),
                usage_public_key=bytes(signing.verify_key)), metadata=worker_md)
            registered.append((reply.worker_id, bytes(signing).hex()))
    return {"agent_keys": agent_keys, "worker_keys": worker_keys, "workers": registered,
            "gpu_second_price": gpu_second_price}
