"""The broker process: gRPC server, reflection, health, expiry sweeps, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.admin import AdminServicer
from .api.authorization import AuthorizationServicer
from .api.base import Services
from .api.interceptors import ObservingInterceptor
from .api.metering import MeteringServicer
from .api.policy import PolicyServicer
from .api.pricing import PricingServicer
from .api.registry import WorkerRegistryServicer
from .api.statements import StatementServicer
from .api.undecodable import UndecodableRequestInterceptor
from .api.voucher_keys import VoucherKeyServicer
from .api.wallet import WalletServicer
from .clock import now_ms
from .core import alerts, audit, idempotency, ledger, metering, periodic, sweeps
from .core.config import CoreConfig
from .core.registry import Liveness
from .datadir import DataDir
from .keyring import Keyring, retire_voucher_keys
from .metrics import BrokerMetrics, MetricsServer
from .store.base import Store
from .tls import ServerTls, add_port
from .v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    authorization_service_pb2,
    authorization_service_pb2_grpc,
    metering_service_pb2,
    metering_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    pricing_service_pb2,
    pricing_service_pb2_grpc,
    statement_service_pb2,
    statement_service_pb2_grpc,
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
# At the end of a shutdown, what calls still running get to finish.
STOP_GRACE_S = 2.0

SERVICES = (
    (admin_service_pb2, "AdminService", admin_service_pb2_grpc, AdminServicer),
    (authorization_service_pb2, "AuthorizationService", authorization_service_pb2_grpc,
     AuthorizationServicer),
    (metering_service_pb2, "MeteringService", metering_service_pb2_grpc, MeteringServicer),
    (policy_service_pb2, "PolicyService", policy_service_pb2_grpc, PolicyServicer),
    (pricing_service_pb2, "PricingService", pricing_service_pb2_grpc, PricingServicer),
    (voucher_key_service_pb2, "VoucherKeyService", voucher_key_service_pb2_grpc,
     VoucherKeyServicer),
    (wallet_service_pb2, "WalletService", wallet_service_pb2_grpc, WalletServicer),
    (worker_registry_service_pb2, "WorkerRegistryService", worker_registry_service_pb2_grpc,
     WorkerRegistryServicer),
    (statement_service_pb2, "StatementService", statement_service_pb2_grpc,
     StatementServicer),
)


class PortInUse(Exception):
    pass


@dataclass
class BrokerSettings:
    listen: str = "127.0.0.1:50051"
    # On SIGTERM/SIGINT, how long open metering sessions get to finish (see Broker.stop).
    shutdown_grace_s: float = 10.0
    sweep_interval_s: float = 0.5
    metrics_listen: str = ""  # host:port of GET /metrics; empty: no endpoint
    # How often the daemon audits the ledger and the journal (0: never).
    audit_interval_s: float = 300.0
    tls: ServerTls | None = None  # None: plaintext


def run_periodic(services: Services) -> int:
    """Pricing's due work: grants, grant expiry, lease ends (blocking; for start-up)."""
    total = 0
    while True:
        done = services.store.submit_sync(lambda tx: periodic.run_due(
            tx, services.clock(), services.config, services.receipt_keyring.signer))
        total += done
        if not done:
            return total


def expire_holds(services: Services) -> int:
    """Resolve every hold that is due (blocking; for start-up). Approvals that timed out
    are denied first, so that their reservations are released as denials."""
    while services.store.submit_sync(lambda tx: sweeps.run(
            tx, services.clock(), services.config, services.receipt_keyring.signer)):
        pass
    total = 0
    while True:
        done = services.store.submit_sync(lambda tx: metering.expire_due(
            tx, services.clock(), services.config, services.receipt_keyring.signer))
        total += done
        if not done:
            return total


class Broker:
    def __init__(self, store: Store, keyring: Keyring, config: CoreConfig,
                 settings: BrokerSettings, cache_secret: bytes = b"",
                 metrics: BrokerMetrics | None = None, *, receipt_keyring: Keyring,
                 clock: Callable[[], int] = now_ms):
        self.services = Services(store=store, keyring=keyring, config=config,
                                 liveness=Liveness(config.worker_lease_ms),
                                 cache_secret=cache_secret, receipt_keyring=receipt_keyring,
                                 clock=clock)
        self.settings = settings
        self.metrics = metrics or BrokerMetrics()
        self.metrics_server: MetricsServer | None = None
        self.health: health.aio.HealthServicer | None = None
        self.server: grpc.aio.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self._auditor: asyncio.Task | None = None
        self._alerts_counted = 0  # alert seq up to which broker_alerts_total has counted
        self.port = 0

    async def start(self) -> None:
        store = self.services.store
        store.submit_sync(lambda tx: ledger.ensure_platform_accounts(tx, self.services.clock()))
        self.metrics.watch_ledger(store)
        if caught_up := run_periodic(self.services):
            log.info("caught up on %d subscription grants, expiries and lease ends", caught_up)
        released = expire_holds(self.services)
        if released:
            log.info("resolved %d holds that timed out while the broker was down", released)
        # The observer first: it sees the final status of every call, refused ones too.
        interceptors = [ObservingInterceptor(self.metrics.rpc, logging.getLogger("broker.rpc")),
                        UndecodableRequestInterceptor()]
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.so_reuseport", 0),  # a second broker on the same port must fail to bind
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        names = []
        for pb2, service, pb2_grpc, servicer in SERVICES:
            getattr(pb2_grpc, f"add_{service}Servicer_to_server")(servicer(self.services),
                                                                  self.server)
            names.append(pb2.DESCRIPTOR.services_by_name[service].full_name)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                  reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        try:
            self.port = add_port(self.server, self.settings.listen, self.settings.tls)
        except RuntimeError as error:
            raise PortInUse(f"cannot listen on {self.settings.listen}: {error}") from None
        if not self.port:
            raise PortInUse(f"cannot listen on {self.settings.listen} (in use?)")
        if self.settings.metrics_listen:
            self.metrics_server = MetricsServer(self.metrics.registry,
                                                self.settings.metrics_listen)
            log.info("metrics on %s", self.metrics_server.url)
        await self.server.start()
        for name in ("", *names[:-1]):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._alerts_counted = store.read(alerts.last_seq)
        self._sweeper = asyncio.create_task(self._sweep())
        if self.settings.audit_interval_s:
            self._auditor = asyncio.create_task(self._audit())
        tls = self.settings.tls
        log.info("broker listening on %s (%s)", self.settings.listen,
                 "plaintext" if tls is None else
                 "TLS, client certificates required" if tls.client_ca else "TLS")

    async def _sweep(self) -> None:
        s = self.services
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                if await s.store.submit(lambda tx: sweeps.run(
                        tx, s.clock(), s.config, s.receipt_keyring.signer)):
                    s.changes.notify()
                await s.store.submit(lambda tx: periodic.run_due(
                    tx, s.clock(), s.config, s.receipt_keyring.signer))
                await s.store.submit(lambda tx: metering.expire_due(
                    tx, s.clock(), s.config, s.receipt_keyring.signer))
                await s.store.submit(lambda tx: idempotency.prune(tx, s.clock()))
                if s.keyring.due(s.clock()):
                    await s.store.submit(lambda tx: retire_voucher_keys(
                        tx, s.keyring, s.clock()))
                self._count_alerts()
            except Exception:
                log.exception("expiry sweep failed; retrying")

    def _count_alerts(self) -> None:
        """broker_alerts_total{kind}: alerts are committed by many operations (authorize,
        settle, sweeps, the audit); count the ones raised since the last look."""
        raised = self.services.store.read(lambda tx: alerts.raised_after(
            tx, self._alerts_counted))
        for alert in raised:
            self.metrics.alert(alert["kind"])
        if raised:
            self._alerts_counted = raised[-1]["seq"]

    async def _audit(self) -> None:
        """The periodic audit: problems are logged and raised as an AUDIT_FAILED alert
        (once per distinct set of problems)."""
        s, reported = self.services, None
        while True:
            await asyncio.sleep(self.settings.audit_interval_s)
            try:
                problems = await asyncio.to_thread(s.store.read, audit.check)
                for problem in problems:
                    log.error("audit: %s", problem)
                if problems and problems != reported:
                    count = len(problems)
                    message = f"{count} problem(s): " + "; ".join(problems[:5])[:900]
                    await s.store.submit(lambda tx, m=message, n=count: (
                        alerts.raise_alert(tx, "audit_failed", "", "", m, s.clock(), {},
                                           observed=n)))
                    s.changes.notify()
                reported = problems
            except Exception:
                log.exception("periodic audit failed; retrying")

    async def stop(self) -> None:
        """Graceful: NOT_SERVING and no new authorizations or sessions at once; open
        metering sessions get the grace period to finish; the streams still open then
        end with SHUTTING_DOWN (their sessions stay open, for the workers to resume on
        a broker that is up); calls in flight finish; the writer flushes its queue."""
        s = self.services
        s.draining = True
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s
        if s.streams.count:
            log.info("draining: waiting up to %.0f s for %d metering session(s) to finish",
                     grace, s.streams.count)
        if not await s.streams.wait_idle(grace):
            log.info("grace period over: ending %d metering stream(s); their sessions stay "
                     "open, to be resumed", s.streams.count)
            s.streams.ended.set()
            await s.streams.wait_idle(STOP_GRACE_S)
        for task in (self._sweeper, self._auditor):
            if task is not None:
                task.cancel()
        if self.server is not None:
            await self.server.stop(STOP_GRACE_S)
        if self.metrics_server is not None:
            self.metrics_server.close()
        s.store.close()  # runs every operation already queued, then closes the env
        log.info("stopped")


async def serve(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings,
                on_ready=None, clock: Callable[[], int] = now_ms) -> None:
    store = data_dir.open_store()
    metrics = BrokerMetrics()
    store.commit_observer = metrics.observe_commit
    try:
        broker = Broker(store, Keyring(data_dir.voucher_keys), config, settings,
                        data_dir.cache_secret(), metrics,
                        receipt_keyring=Keyring.open(data_dir.receipt_keys), clock=clock)
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
