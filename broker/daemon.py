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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from common.clock import now_ms
from common.errors import BrokerError, Code
from common.interceptors import ObservingInterceptor, WrappedHandlers, WrappingInterceptor
from common.metrics import MetricsServer
from common.supervision import Supervisor, wait_for_stop
from common.targets import SERVER_PING_POLICY
from common.tls import ServerTls, add_port
from common.undecodable import UndecodableRequestInterceptor

from .api import watch
from .api.admin import AdminServicer
from .api.authorization import AuthorizationServicer
from .api.base import Limits, Services
from .api.delegation import DelegationServicer
from .api.metering import MeteringServicer
from .api.policy import PolicyServicer
from .api.pricing import PricingServicer
from .api.registry import WorkerRegistryServicer
from .api.statements import StatementServicer
from .api.voucher_keys import VoucherKeyServicer
from .api.wallet import WalletServicer
from .core import (
    alerts,
    audit,
    idempotency,
    ledger,
    metering,
    periodic,
    rate_limits,
    sweeps,
)
from .core.config import CoreConfig
from .core.registry import Liveness
from .datadir import DataDir
from .keyring import Keyring, finish_retirements, journal_retirements
from .metrics import BrokerMetrics
from .store.base import StorageFull, Store, submit_single
from .store.lmdb_store import RuntimeTables, lock_dir, unlock_dir
from .v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    authorization_service_pb2,
    authorization_service_pb2_grpc,
    delegation_service_pb2,
    delegation_service_pb2_grpc,
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
KEEPALIVE_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
# At the end of a shutdown, what calls still running get to finish.
STOP_GRACE_S = 2.0
# How often the request-rate buckets shared in a database drop those that refilled.
RATE_BUCKET_PRUNE_S = 30.0

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
    (delegation_service_pb2, "DelegationService", delegation_service_pb2_grpc,
     DelegationServicer),
)


class PortInUse(Exception):
    pass


@dataclass
class BrokerSettings:
    listen: str = "127.0.0.1:50051"
    # On SIGTERM/SIGINT, how long open metering sessions get to finish (see Broker.stop).
    shutdown_grace_s: float = 10.0
    sweep_interval_s: float = 0.5
    # How often watch streams read the store again when nothing woke them (api/watch.py).
    watch_poll_s: float = 1.0
    metrics_listen: str = ""  # host:port of GET /metrics; empty: no endpoint
    # How often the daemon audits the ledger and the journal (0: never).
    audit_interval_s: float = 300.0
    tls: ServerTls | None = None  # None: plaintext
    # False: no fsync per commit. For benchmarks only: acknowledged ops may be lost.
    durable: bool = True
    limits: Limits = field(default_factory=Limits)  # streams and failed authentications


@dataclass
class Prefork:
    """What one server process of `serve_processes` shares with its siblings."""

    index: int  # 0 alone runs the periodic audit and retires signing keys
    runtime: RuntimeTables  # worker leases and request-rate buckets

    @property
    def primary(self) -> bool:
        return self.index == 0


def _until_done(services: Services, step) -> int:
    """Run `step(tx, now, config, signer)` (blocking) until it handles nothing more;
    how many items it handled in all."""
    total = 0
    while done := services.store.submit_sync(lambda tx: step(
            tx, services.clock(), services.config, services.receipt_keyring.signer)):
        total += done
    return total


def run_periodic(services: Services) -> int:
    """Pricing's due work: grants, grant expiry, lease ends (blocking; for start-up)."""
    return _until_done(services, periodic.run_due)


# Holds one start-up transaction resolves on a database other brokers share: they sweep
# the same due holds meanwhile, and a short transaction is the one that gets through
# (500 at a time, a restarted broker's catch-up kept losing to theirs for a minute).
SHARED_STORE_EXPIRY_BATCH = 50


def expire_holds(services: Services) -> int:
    """Resolve every hold that is due (blocking; for start-up). Approvals that timed out
    are denied first, so that their reservations are released as denials."""
    _until_done(services, sweeps.run)
    if getattr(services.store, "shared_table", None) is None:
        return _until_done(services, metering.expire_due)
    return _until_done(services, lambda tx, now, config, signer: metering.expire_due(
        tx, now, config, signer, limit=SHARED_STORE_EXPIRY_BATCH))


class _GenericHandlersOnly:
    """The server as the generated `add_*_to_server` functions see it, minus
    `add_registered_method_handlers`. Why: grpc.aio keeps one pending request per
    registered method and, for every call, waits on all of them (asyncio.wait over
    30 futures: a third of the event loop's time per call in the profile, see
    docs/performance.md). Generic handlers route the same methods with one lookup.
    `install` gives the server all of them as one, with the interceptors applied once
    per method (common.interceptors.WrappedHandlers), not awaited on every call."""

    def __init__(self, server: grpc.aio.Server):
        self._server = server
        self._handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers) -> None:
        pass

    def install(self, interceptors: list[WrappingInterceptor]) -> None:
        self._server.add_generic_rpc_handlers((WrappedHandlers(self._handlers, interceptors),))


class Broker:
    def __init__(self, store: Store, keyring: Keyring, config: CoreConfig,
                 settings: BrokerSettings, cache_secret: bytes = b"",
                 metrics: BrokerMetrics | None = None, *, receipt_keyring: Keyring,
                 clock: Callable[[], int] = now_ms, prefork: Prefork | None = None):
        shared = prefork.runtime if prefork else None
        # Worker leases and request-rate buckets: in the database when several brokers
        # share one (PgStore), else in the prefork processes' shared tables, else in
        # this process.
        shared_table = getattr(store, "shared_table", None)
        leases = shared_table("worker_leases") if shared_table is not None else \
            shared.leases if shared else {}
        db_buckets = getattr(store, "rate_buckets", None)
        limiter = rate_limits.RequestLimiter(shared=db_buckets()) if db_buckets else \
            rate_limits.RequestLimiter(shared.rate_buckets if shared else None)
        self.services = Services(
            store=store, keyring=keyring, config=config,
            liveness=Liveness(config.worker_lease_ms, leases),
            cache_secret=cache_secret, receipt_keyring=receipt_keyring, clock=clock,
            limits=settings.limits, limiter=limiter)
        self.services.changes.poll_s = settings.watch_poll_s
        self.settings = settings
        self.prefork = prefork
        self.metrics = metrics or BrokerMetrics()
        self.metrics_server: MetricsServer | None = None
        self.health: health.aio.HealthServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.supervisor: Supervisor | None = None  # the sweep and the audit
        self._failing: dict[str, str] = {}  # sweep step -> the error of its failing streak
        self._storage_full = False  # as health last said
        self._health_names: tuple[str, ...] = ()
        self._audit_reported: list[str] | None = None
        self._alerts_counted = 0  # alert seq up to which broker_alerts_total has counted
        self.port = 0

    async def start(self) -> None:
        store = self.services.store
        store.submit_sync(lambda tx: ledger.ensure_platform_accounts(tx, self.services.clock()))
        self.metrics.watch_ledger(store)
        try:
            if caught_up := run_periodic(self.services):
                log.info("caught up on %d subscription grants, expiries and lease ends",
                         caught_up)
            if released := expire_holds(self.services):
                log.info("resolved %d holds that timed out while the broker was down",
                         released)
        except BrokerError as error:
            # Several brokers on one database: the others sweep the same due holds (this
            # one's transaction may keep conflicting with theirs), or the database is
            # away for a moment. Not a reason to stay down: the periodic sweep catches up.
            if error.code is not Code.UNAVAILABLE:
                raise
            log.warning("start-up catch-up left to the periodic sweep: %s", error.message)
        # The observer first: it sees the final status of every call, refused ones too.
        observer = ObservingInterceptor(self.metrics.rpc, logging.getLogger("broker.rpc"))
        interceptors = [observer, UndecodableRequestInterceptor()]
        self.server = grpc.aio.server(options=[
            # A second broker on the same port must fail to bind; the server processes of
            # one prefork broker share it (serve_processes checked that it was free).
            ("grpc.so_reuseport", int(self.prefork is not None)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Ping idle connections so that streams of peers that vanished (no FIN) are
            # noticed and ended, instead of being held open for good.
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            # Let clients ping every few seconds: that is how they notice a broker that
            # hangs and move to another (common/targets.py).
            *SERVER_PING_POLICY,
        ])
        names = []
        server = _GenericHandlersOnly(self.server)
        for pb2, service, pb2_grpc, servicer in SERVICES:
            getattr(pb2_grpc, f"add_{service}Servicer_to_server")(servicer(self.services), server)
            names.append(pb2.DESCRIPTOR.services_by_name[service].full_name)
        # Health (Check, Watch) and reflection come on top of our services' methods.
        methods = 3 + sum(len(pb2.DESCRIPTOR.services_by_name[name].methods)
                          for pb2, name, _, _ in SERVICES)
        self.metrics.watch_tables(lambda: {
            **self.services.memory_tables(),
            "rpc_handlers": (observer.wrapped, methods),
            "rpc_label_sets": (self.metrics.rpc.label_sets, None)})
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                  reflection.SERVICE_NAME]
        # enable_server_reflection(names, server), spelled out for the wrapped server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), server)
        server.install(interceptors)
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
        self._health_names = ("", *names[:-1])
        for name in self._health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._alerts_counted = await self.services.read(alerts.last_seq)
        listen = getattr(store, "listen", None)
        if listen is not None:  # PostgreSQL: changes made through other brokers wake ours
            changes, loop = self.services.changes, asyncio.get_running_loop()
            listen(watch.SIGNAL_TABLES, lambda: changes.notify_threadsafe(loop))
        self.supervisor = Supervisor(self.metrics.task_failed)
        self.supervisor.start("sweep", self._sweep)
        if self.settings.audit_interval_s and (self.prefork is None or self.prefork.primary):
            self.supervisor.start("audit", self._audit)
        tls = self.settings.tls
        log.info("broker listening on %s (%s)", self.settings.listen,
                 "plaintext" if tls is None else
                 "TLS, client certificates required" if tls.client_ca else "TLS")

    def _sweep_steps(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        """The steps of one sweep tick, in order, by name (the `task` label of
        broker_background_task_failures_total is `sweep.<name>`)."""
        s = self.services

        def run(step):
            return s.store.submit(lambda tx: step(tx, s.clock(), s.config,
                                                  s.receipt_keyring.signer))

        async def spend_controls() -> None:
            if await run(sweeps.run):
                s.changes.notify()

        async def keys() -> None:
            # A sibling process, or another broker on the same database (the key
            # directory is shared), may have rotated or retired keys.
            s.keyring.reload()
            s.receipt_keyring.reload()
            if (self.prefork is None or self.prefork.primary) and s.keyring.due(s.clock()):
                now = s.clock()
                # The seeds go after the commit (keyring.journal_retirements says why).
                due = await submit_single(s.store, "voucher_keys", lambda tx: (
                    journal_retirements(tx, s.keyring, now)))
                if due:
                    finish_retirements(s.keyring, due)

        async def alert_counts() -> None:
            await self._count_alerts()

        next_prune = [0.0]

        async def rate_buckets() -> None:
            # Shared buckets (PostgreSQL) that refilled are dropped now and then (those
            # in memory are pruned as they grow).
            if (now := asyncio.get_running_loop().time()) >= next_prune[0]:
                next_prune[0] = now + RATE_BUCKET_PRUNE_S
                await asyncio.to_thread(s.limiter.prune, s.clock())

        async def roll_up() -> None:
            while await submit_single(s.store, "roll_up", ledger.roll_up) == \
                    ledger.ROLL_UP_BATCH:
                pass  # more entries than one step folds: keep going

        return [("storage", self._check_storage),
                ("spend_controls", spend_controls),
                ("periodic", lambda: run(periodic.run_due)),
                ("expiry", lambda: run(metering.expire_due)),
                ("idempotency", lambda: s.store.submit(lambda tx: idempotency.prune(
                    tx, s.clock()))),
                ("roll_up", roll_up),
                ("keys", keys),
                ("alerts", alert_counts),
                ("rate_buckets", rate_buckets)]

    async def _sweep(self) -> None:
        steps = self._sweep_steps()
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            await self.sweep_once(steps)

    async def sweep_once(self, steps) -> None:
        """One tick. Each step has its own error handling: one that fails is logged
        (with its traceback when it starts failing, not every tick) and counted, and
        the others still run; it runs again next tick."""
        for name, step in steps:
            try:
                await step()
            except Exception as error:
                self.metrics.task_failed(f"sweep.{name}")
                if self._failing.get(name) != repr(error):
                    log.error("sweep step %s failed; the other steps go on, and it is "
                              "retried every tick", name, exc_info=not isinstance(
                                  error, StorageFull))
                self._failing[name] = repr(error)
            else:
                if self._failing.pop(name, None) is not None:
                    log.info("sweep step %s works again", name)

    async def _check_storage(self) -> None:
        """Health follows the ledger's writes: NOT_SERVING while they fail for lack of
        room (reads still work, and the broker recovers by itself once space is back:
        while full, this probes with a small write every tick)."""
        store = self.services.store
        if store.storage_full:
            with contextlib.suppress(StorageFull):
                now = self.services.clock()
                await store.submit(lambda tx: tx.put("meta", "storage_probe", {"time_ms": now}))
        full = store.storage_full
        if full != self._storage_full and not self.services.draining:
            self._storage_full = full
            status = health_pb2.HealthCheckResponse.NOT_SERVING if full else \
                health_pb2.HealthCheckResponse.SERVING
            for name in self._health_names:
                await self.health.set(name, status)
            log.warning("storage full: health NOT_SERVING until ledger writes succeed" if full
                        else "storage writable again: health SERVING")

    async def _count_alerts(self) -> None:
        """broker_alerts_total{kind}: alerts are committed by many operations (authorize,
        settle, sweeps, the audit); count the ones raised since the last look."""
        raised = await self.services.read(lambda tx: alerts.raised_after(
            tx, self._alerts_counted))
        for alert in raised:
            self.metrics.alert(alert["kind"])
        if raised:
            self._alerts_counted = raised[-1]["seq"]

    async def _audit(self) -> None:
        """The periodic audit: problems are logged and raised as an AUDIT_FAILED alert
        (once per distinct set of problems). Supervised: a failure is retried."""
        s = self.services
        while True:
            await asyncio.sleep(self.settings.audit_interval_s)
            problems = await asyncio.to_thread(s.store.read, audit.check)
            for problem in problems:
                log.error("audit: %s", problem)
            if problems and problems != self._audit_reported:
                count = len(problems)
                message = f"{count} problem(s): " + "; ".join(problems[:5])[:900]
                await s.store.submit(lambda tx, m=message, n=count: (
                    alerts.raise_alert(tx, "audit_failed", "", "", m, s.clock(), {},
                                       observed=n)))
                s.changes.notify()
            self._audit_reported = problems

    async def stop(self) -> None:
        """Graceful: NOT_SERVING and no new authorizations or sessions at once; open
        metering sessions get the grace period to finish; the streams still open then
        end with SHUTTING_DOWN (their sessions stay open, for the workers to resume on
        a broker that is up); calls in flight finish; the writer flushes its queue."""
        s = self.services
        s.draining = True
        s.streams.draining.set()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_s
        if s.streams.count:
            log.info("draining: waiting up to %.0f s for %d metering session(s) to finish",
                     grace, s.streams.count)
        if not await s.streams.wait_idle(grace):
            log.info("grace period over: ending %d metering stream(s); their sessions stay "
                     "open, to be resumed", s.streams.count)
            s.streams.end()
            await s.streams.wait_idle(STOP_GRACE_S)
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.server is not None:
            await self.server.stop(STOP_GRACE_S)
        if self.metrics_server is not None:
            self.metrics_server.close()
        s.store.close()  # runs every operation already queued, then closes the env
        s.crypto.close()
        log.info("stopped")


async def serve(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings,
                on_ready=None, clock: Callable[[], int] = now_ms, *,
                prefork: Prefork | None = None) -> int:
    """Run one broker server until SIGTERM/SIGINT (exit status 0), or until a
    background task cannot go on (1). prefork: one of the server processes of
    `serve_processes` (the parent holds the data directory lock)."""
    store = data_dir.open_store(durable=settings.durable, lock=prefork is None)
    metrics = BrokerMetrics()
    store.commit_observer = metrics.observe_commit
    try:
        broker = Broker(store, Keyring(data_dir.voucher_keys), config, settings,
                        data_dir.cache_secret(), metrics,
                        receipt_keyring=Keyring.open(data_dir.receipt_keys), clock=clock,
                        prefork=prefork)
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
    code = await wait_for_stop(stop, broker.supervisor)
    log.info("shutting down")
    await broker.stop()
    return code


def _runtime_path(data_dir: DataDir) -> Path:
    return data_dir.root / "runtime"


def serve_processes(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings,
                    processes: int, on_ready=None, clock: Callable[[], int] = now_ms) -> int:
    """Prefork: `processes` server processes on one port (SO_REUSEPORT) and one LMDB
    environment; returns the exit status. Blocks until SIGTERM/SIGINT (passed on to
    every server) or until a server exits on its own (the others are then stopped).

    What the servers share, and how: the ledger, sessions and request ids live in
    LMDB, opened by each process after the fork (LMDB serialises write transactions
    across processes, so each process's group-commit writer stays correct), so a
    retried call or a resumed session may land on any process. Worker leases and
    request-rate buckets are in `RuntimeTables`, a second LMDB environment without
    fsync. Signing keys are files: each process takes up a sibling's rotation within
    one sweep interval; only the first process retires keys and runs the periodic
    audit. Each process serves its own metrics, on the metrics port plus its index.
    The data directory lock is taken here, before the fork, and held by all of them.
    `on_ready` runs in the first server only.
    """
    lock_fd = lock_dir(data_dir.ledger)
    try:
        listen = _reserve_port(settings.listen)
        shutil.rmtree(_runtime_path(data_dir), ignore_errors=True)  # leases, rate buckets
        sys.stdout.flush()
        sys.stderr.flush()
        children: dict[int, int] = {}
        try:
            for index in range(processes):
                pid = os.fork()
                if pid == 0:
                    _run_server(data_dir, config, replace(settings, listen=listen),
                                on_ready if index == 0 else None, clock, index, processes)
                children[pid] = index
        except BaseException:
            _stop(children)
            raise
        return _supervise(children)
    finally:
        unlock_dir(lock_fd)


def _reserve_port(listen: str) -> str:
    """`listen` with a concrete port, after checking nothing else listens there (our
    servers bind with SO_REUSEPORT, which would let them join another's port).

    The probe binds with SO_REUSEADDR, as the servers do: on Linux that bind fails only
    if a socket is listening on the port, not for the connections a killed broker left
    in TIME-WAIT (without it, a prefork broker could not restart for a minute after a
    crash that left connections open)."""
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), int(port)))
        except (OSError, ValueError) as error:
            raise PortInUse(f"cannot listen on {listen}: {error}") from None
        return f"{host}:{probe.getsockname()[1]}"


def _run_server(data_dir: DataDir, config: CoreConfig, settings: BrokerSettings, on_ready,
                clock: Callable[[], int], index: int, processes: int) -> None:
    """The body of one forked server process; never returns."""
    code = 1
    try:
        _die_with_parent()
        log.info("server process %d/%d (pid %d)", index + 1, processes, os.getpid())
        if settings.metrics_listen:  # one endpoint per process: scrape them all
            host, _, port = settings.metrics_listen.rpartition(":")
            settings = replace(settings, metrics_listen=f"{host}:{int(port) + index}")
        prefork = Prefork(index, RuntimeTables(_runtime_path(data_dir)))  # after the fork
        code = asyncio.run(serve(data_dir, config, settings, on_ready, clock, prefork=prefork))
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
