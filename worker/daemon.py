"""`worker serve`: probe the hardware, register with the broker, serve jobs,
and on SIGTERM stop taking jobs, drain, deregister."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nacl.signing import SigningKey

from common import tls
from common.files import make_private, private_dir, write_secret
from common.interceptors import ObservingInterceptor
from common.metrics import MetricsListenError, MetricsServer
from common.supervision import Supervisor, wait_for_stop
from common.undecodable import UndecodableRequestInterceptor

from .config import WorkerConfig
from .execution import BrokerAccess, JobRunner, WorkerIdentity
from .meters import make_meter, probe_capabilities
from .metrics import WorkerMetrics
from .registration import Registration
from .result_cache import ResultCache
from .runtime.engine import BUILTIN_MODEL, Runtime
from .service import WorkerServicer
from .v1 import worker_service_pb2, worker_service_pb2_grpc
from .voucher_check import VoucherVerifier, grpc_key_fetcher
from .worker_stream import WorkerStream

log = logging.getLogger("worker")
SERVICE_NAME = worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
# On shutdown, how long cancelled jobs get to settle with the broker.
SETTLE_TIMEOUT_S = 15.0


class ListenError(Exception):
    pass


def load_usage_key(path: Path) -> SigningKey:
    """The worker's Ed25519 usage-signing key, created on first start (mode 0600)."""
    if not path.exists():
        write_secret(path, SigningKey.generate().encode().hex().encode())
    return SigningKey(bytes.fromhex(path.read_text().strip()))


async def serve(config: WorkerConfig, on_ready=None) -> int:
    """Serve until SIGTERM/SIGINT (exit status 0) or until a background task cannot go
    on (1: e.g. the broker refuses the worker's key); either way drain first."""
    state = private_dir(Path(config.state_dir))
    make_private(state)  # worker-id, usage key: also those an older version left 0644
    usage_key = load_usage_key(state / "usage-key")
    api_key = config.read_api_key()
    server_tls, broker_tls = config.server_tls(), config.broker_tls()
    runtime = Runtime(checkpoints=config.checkpoints, handler_modules=config.handler_modules)
    # Build the models now, so no agent pays for loading them (and measure their sizes).
    await asyncio.to_thread(runtime.load_model, BUILTIN_MODEL)
    sizes = await asyncio.to_thread(runtime.model_sizes)
    capabilities = {**probe_capabilities(), "models": runtime.models(), "model_sizes": sizes}
    metrics = WorkerMetrics(capabilities, runtime.device)

    interceptors = [ObservingInterceptor(metrics.rpc, logging.getLogger("worker.rpc")),
                    UndecodableRequestInterceptor(domain="worker.v1")]
    server = grpc.aio.server(interceptors=interceptors,
                             options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 1 << 20)])
    try:
        port = tls.add_port(server, config.listen, server_tls)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {config.listen}: {error}") from None
    if not port:
        raise ListenError(f"cannot listen on {config.listen} (in use?)")
    metrics_server = None
    if config.metrics_listen:
        try:
            metrics_server = MetricsServer(metrics.registry, config.metrics_listen)
        except MetricsListenError as error:
            raise ListenError(str(error)) from None
        log.info("metrics on %s", metrics_server.url)

    # Reconnect to a restarted broker within seconds, not gRPC's default 2 minutes; and
    # notice a broker that hangs (keepalive pings), then move to the next in the list.
    options = [("grpc.max_reconnect_backoff_ms", 2000)]
    channel = tls.broker_aio_channel(config.broker, broker_tls, options,
                                     order=config.broker_order)
    # In a thread; with `spread` it may pick another broker than `channel`: all serve
    # the same keys.
    key_channel = tls.broker_channel(config.broker, broker_tls, options,
                                     order=config.broker_order)
    registration = Registration(channel, api_key, config.endpoint, capabilities,
                                config.prices, bytes(usage_key.verify_key), state / "worker-id",
                                metrics.task_failed)
    worker_id = await registration.register()
    cache = ResultCache(state / "cache")
    metrics.watch_cache(lambda: cache.size, cache.max_entries)
    # One metering stream for all jobs (worker_stream.py), unless configured off.
    stream = WorkerStream(channel, api_key, worker_id, usage_key) \
        if config.batched_metering else None
    runner = JobRunner(runtime, lambda: make_meter(runtime.device),
                       VoucherVerifier(grpc_key_fetcher(key_channel)).verify,
                       BrokerAccess(channel, api_key, usage_key, stream),
                       WorkerIdentity(worker_id, capabilities, config.prices), cache, metrics,
                       config.report_every_tokens)
    servicer = WorkerServicer(runner, config.max_concurrent_jobs, config.handler_modules)
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    supervisor = Supervisor(metrics.task_failed)
    supervisor.start("heartbeat", registration.heartbeat_forever)
    log.info("worker %s serving on %s (%s, meter %s, %s)", worker_id, config.listen,
             capabilities["resource_class"], capabilities["meter"],
             "plaintext" if server_tls is None else
             "TLS, client certificates required" if server_tls.client_ca else "TLS")
    if on_ready is not None:
        on_ready(worker_id, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = await wait_for_stop(stop, supervisor)

    log.info("draining: no new jobs")
    await health_servicer.enter_graceful_shutdown()
    grace = config.shutdown_grace_seconds
    if not await servicer.drain(grace):
        log.warning("jobs still running after %.0f s; cancelling them", grace)
    await supervisor.stop()
    # Cancels the calls of jobs still running, as if their agents hung up: each job stops
    # and settles what it measured, over the broker link, so that stays open until then.
    await server.stop(0)
    if not await servicer.drain(SETTLE_TIMEOUT_S):
        log.warning("jobs not settled after %.0f s; their holds settle what the broker "
                    "acknowledged when they expire", SETTLE_TIMEOUT_S)
    await registration.deregister()
    if stream is not None:
        await stream.close()
    await channel.close()
    key_channel.close()
    cache.close()
    if metrics_server is not None:
        metrics_server.close()
    return code
