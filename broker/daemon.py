"""The broker process: gRPC server, reflection, health, expiry sweeps, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from .api.admin import AdminServicer
from .api.authorization import AuthorizationServicer
from .api.base import Services
from .api.metering import MeteringServicer
from .api.registry import WorkerRegistryServicer
from .api.undecodable import UndecodableRequestInterceptor
from .api.voucher_keys import VoucherKeyServicer
from .api.wallet import WalletServicer
from .core import idempotency, ledger, metering
from .core.config import CoreConfig
from .core.registry import Liveness
from .datadir import DataDir
from .keyring import Keyring
from .store.base import Store
from .store.lmdb_store import LeaseTable, LmdbStore, lock_dir, unlock_dir
from .v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    authorization_service_pb2,
    authorization_service_pb2_grpc,
    metering_service_pb2,
    metering_service_pb2_grpc,
    voucher_key_service_pb2,
    voucher_key_service_pb2_grpc,
    wallet_service_pb2,
    wallet_service_pb2_grpc,
    worker_registry_service_pb2,
    worker_registry_service_pb2_grpc,
)

log = logging.getLogger("broker")

# Requests are small; anything bigger is refused by gRPC with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 64 * 1024
SWEEP_INTERVAL_S = 0.5

SERVICES = (
    (admin_service_pb2, "AdminService", admin_service_pb2_grpc, AdminServicer),
    (authorization_service_pb2, "AuthorizationService", authorization_service_pb2_grpc,
     AuthorizationServicer),
    (metering_service_pb2, "MeteringService", metering_service_pb2_grpc, MeteringServicer),
    (voucher_key_service_pb2, "VoucherKeyService", voucher_key_service_pb2_grpc,
     VoucherKeyServicer),
    (wallet_service_pb2, "WalletService", wallet_service_pb2_grpc, WalletServicer),
    (worker_registry_service_pb2, "WorkerRegistryService", worker_registry_service_pb2_grpc,
     WorkerRegistryServicer),
)


class PortInUse(Exception):
    pass


@dataclass
class BrokerSettings:
    listen: str = "127.0.0.1:50051"
    shutdown_grace_s: float = 5.0
    # False: no fsync per commit. For benchmarks only: acknowledged ops may be lost.
    durable: bool = True


def expire_holds(services: Services) -> int:
    """Resolve every hold that is due (blocking; for start-up)."""
    total = 0
    while True:
        done = services.store.submit_sync(lambda tx: metering.expire_due(
            tx, services.clock(), services.config, services.keyring.signer))
        total += done
        if not done:
            return total


class _GenericHandlersOnly:
    """The server as the generated `add_*_to_server` functions see it, minus
    `add_registered_method_handlers`. Why: grpc.aio keeps one pending request per
    registered method and, for every call, waits on all of them (asyncio.wait over
    30 futures: a third of the event loop's time per call in the profile, see
    docs/performance.md). Generic handlers route the same methods with one lookup."""

    def __init__(self, server: grpc.aio.Server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers) -> None:
        pass


class Broker:
    def __init__(self, store: Store, keyring: Keyring, config: CoreConfig,
                 settings: BrokerSettings, cache_secret: bytes = b"", *,
                 leases: MutableMapping[str, int] | None = None, reuse_port: bool = False):
        liveness = Liveness(config.worker_lease_ms, {} if leases is None else leases)
        self.services = Services(store=store, keyring=keyring, config=config,
                                 liveness=liveness, cache_secret=cache_secret)
        self.settings = settings
        self.reuse_port = reuse_port
        self.health: health.aio.HealthServicer | None = None
        self.server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self.port = 0

    async def start(self) -> None:
        store = self.services.store
        store.submit_sync(lambda tx: ledger.ensure_platform_accounts(tx, self.services.clock()))
        released = expire_holds(self.services)
        if released:
            log.info("resolved %d holds that timed out while the broker was down", released)
        self.server = grpc.aio.server(interceptors=[UndecodableRequestInterceptor()], options=[
            # A second broker on the same port must fail to bind; the server processes of
            # one prefork broker share it (serve_processes checked that it was free).
            ("grpc.so_reuseport", int(self.reuse_port)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        names = []
        server = _GenericHandlersOnly(self.server)
        for pb2, service, pb2_grpc, servicer in SERVICES:
            getattr(pb2_grpc, f"add_{service}Servicer_to_server")(servicer(self.services), server)
            names.append(pb2.DESCRIPTOR.services_by_name[service].full_name)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                  reflection.SERVICE_NAME]
        # enable_server_reflection(names, server), spelled out for the wrapped server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), server)
        try:
            self.port = self.server.add_insecure_port(self.settings.listen)
        except RuntimeError as error:
            raise PortInUse(f"cannot listen on {self.settings.listen}: {error}") from None
        if not self.port:
            raise PortInUse(f"cannot listen on {self.settings.listen} (in use?)")
        await self.server.start()
        for name in ("", *names[:-1]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("broker listening on %s", self.settings.listen)

    async def _sweep(self) -> None:
        s = self.services
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await s.store.submit(lambda tx: metering.expire_due(
                    tx, s.clock(), s.config, s.keyring.signer))
                await s.store.submit(lambda tx: idempotency.prune(tx, s.clock()))
            except Exception:
                log.exception("expiry sweep failed; retrying")

    async def stop(self) -> None:
        """Graceful: NOT_SERVING, refuse new work, let calls finish, flush the writer."""
        self.services.draining = True
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)
        self.services.store.close()


async def serve(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings,
                on_ready=None, *, prefork: bool = False) -> None:
    """Run one broker server until SIGTERM/SIGINT. prefork: one of the server
    processes of `serve_processes` (the parent holds the data directory lock)."""
    store = LmdbStore(data_dir.ledger, durable=settings.durable, lock=not prefork)
    leases = LeaseTable(_leases_path(data_dir)) if prefork else None
    try:
        broker = Broker(store, Keyring(data_dir.voucher_keys), config, settings,
                        data_dir.cache_secret(), leases=leases, reuse_port=prefork)
        await broker.start()
    except BaseException:
        store.close()
        raise
    if on_ready is not None:
        on_ready(broker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await broker.stop()


def _leases_path(data_dir: DataDir) -> Path:
    return data_dir.root / "leases"


def serve_processes(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings,
                    processes: int, on_ready=None) -> int:
    """Prefork: `processes` server processes on one port (SO_REUSEPORT) and one LMDB
    environment; returns the exit status. Blocks until SIGTERM/SIGINT (passed on to
    every server) or until a server exits on its own (the others are then stopped).

    What the servers share, and how: the ledger, sessions and request ids live in
    LMDB, opened by each process after the fork (LMDB serialises write transactions
    across processes, so each process's group-commit writer stays correct), so a
    retried call or a resumed session may land on any process. Worker liveness is
    in `LeaseTable`, a second LMDB environment without fsync. The data directory lock
    is taken here, before the fork, and held by all of them. `on_ready` runs in the
    first server only.
    """
    lock_fd = lock_dir(data_dir.ledger)
    try:
        listen = _reserve_port(settings.listen)
        shutil.rmtree(_leases_path(data_dir), ignore_errors=True)  # liveness is not durable
        sys.stdout.flush()
        sys.stderr.flush()
        children: dict[int, int] = {}
        try:
            for index in range(processes):
                pid = os.fork()
                if pid == 0:
                    _run_server(data_dir, config, replace(settings, listen=listen),
                                on_ready if index == 0 else None, index, processes)
                children[pid] = index
        except BaseException:
            _stop(children)
            raise
        return _supervise(children)
    finally:
        unlock_dir(lock_fd)


def _reserve_port(listen: str) -> str:
    """`listen` with a concrete port, after checking nothing else listens there (our
    servers bind with SO_REUSEPORT, which would let them join another's port)."""
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), int(port)))
        except (OSError, ValueError) as error:
            raise PortInUse(f"cannot listen on {listen}: {error}") from None
        return f"{host}:{probe.getsockname()[1]}"


def _run_server(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings, on_ready,
                index: int, processes: int) -> None:
    """The body of one forked server process; never returns."""
    code = 1
    try:
        _die_with_parent()
        log.info("server process %d/%d (pid %d)", index + 1, processes, os.getpid())
        asyncio.run(serve(data_dir, config, settings, on_ready, prefork=True))
        code = 0
    except BaseException:
        log.exception("server process %d failed", index + 1)
    finally:
        logging.shutdown()
        os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies, so no server outlives it unnoticed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(children: dict[int, int]) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _supervise(children: dict[int, int]) -> int:
    stopping = False

    def stop_all(_signum=None, _frame=None) -> None:
        nonlocal stopping
        stopping = True
        _stop(children)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_all)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            log.error("server process %d (pid %d) exited with %d; stopping the others",
                      index + 1, pid, code)
            status = status or 1
            stop_all()
    return status
