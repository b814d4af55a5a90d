"""ObservingInterceptor on a real grpc.aio server: the status code every kind of call
ends with (returned, aborted, crashed, hung up on, timed out), its latency, and the
ids of its first messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import metering_service_pb2 as meter_pb
from common.interceptors import ObservingInterceptor


class Sink:
    """The RpcObserver side: what the metrics would get."""

    def __init__(self):
        self.starts: list[tuple] = []
        self.ends: list[tuple] = []

    def started(self, kind, service, method):
        self.starts.append((kind, service, method))

    def handled(self, kind, service, method, code, seconds):
        self.ends.append((kind, service, method, code, seconds))


class Health(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        if request.service == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such service")
        if request.service == "crash":
            raise ValueError("a bug")
        if request.service == "slow":
            await asyncio.sleep(5)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Watch(self, request, context):
        for _ in range(100):
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
            await asyncio.sleep(0.05)


async def meter(requests, context):
    async for _ in requests:
        yield meter_pb.MeterResponse(grant=meter_pb.SessionGrant(session_id="ses_9"))


def test_codes_latency_and_ids_of_every_kind_of_call(caplog):
    sink = Sink()

    async def main():
        logger = logging.getLogger("test.rpc")
        interceptor = ObservingInterceptor(sink, logger, quiet=())
        server = grpc.aio.server(interceptors=[interceptor])
        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.Meter", {"Meter": grpc.stream_stream_rpc_method_handler(
                meter, meter_pb.MeterRequest.FromString,
                meter_pb.MeterResponse.SerializeToString)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service, timeout in (("", 10), ("abort", 10), ("crash", 10), ("slow", 1.0)):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await health.Check(health_pb2.HealthCheckRequest(service=service),
                                       timeout=timeout)
            watch = health.Watch(health_pb2.HealthCheckRequest())
            await watch.read()
            watch.cancel()
            bidi = channel.stream_stream("/test.Meter/Meter",
                                         meter_pb.MeterRequest.SerializeToString,
                                         meter_pb.MeterResponse.FromString)
            call = bidi()
            await call.write(meter_pb.MeterRequest(open=meter_pb.OpenSession(
                request_id="r-7", voucher="cbv1.secret.voucher.token", worker_id="wrk_3")))
            await call.read()
            await call.done_writing()
            await call.code()
            for _ in range(100):  # the server side of a cancel ends a little later
                if len(sink.ends) == 6:
                    break
                await asyncio.sleep(0.05)
        await server.stop(0)

    with caplog.at_level(logging.INFO, logger="test.rpc"):
        asyncio.run(main())
        records = [r for r in caplog.records if r.name == "test.rpc"]

    codes = [(kind, method, code) for kind, _, method, code, _ in sink.ends]
    assert sorted(codes) == sorted([
        ("unary", "Check", "OK"), ("unary", "Check", "NOT_FOUND"),
        ("unary", "Check", "UNKNOWN"), ("unary", "Check", "DEADLINE_EXCEEDED"),
        ("server_stream", "Watch", "CANCELLED"), ("bidi_stream", "Meter", "OK")])
    assert len(sink.starts) == 6
    slow = [s for _, _, _, code, s in sink.ends if code == "DEADLINE_EXCEEDED"]
    assert slow[0] >= 0.9
    [meter_line] = [r for r in records if r.method == "/test.Meter/Meter"]
    assert (meter_line.request_id, meter_line.worker_id, meter_line.session_id) == \
        ("r-7", "wrk_3", "ses_9")
    assert "voucher" not in vars(meter_line) and "secret" not in str(vars(meter_line))
    [crash] = [r for r in records if r.code == "UNKNOWN"]
    assert crash.levelno == logging.WARNING  # a server fault
    assert {r.levelno for r in records if r.code != "UNKNOWN"} == {logging.INFO}
    assert all(r.duration_ms >= 0 for r in records) and len(records) == 6


def test_quiet_methods_log_at_debug(caplog):
    sink = Sink()

    async def main():
        server = grpc.aio.server(interceptors=[
            ObservingInterceptor(sink, logging.getLogger("test.quiet"))])
        health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await server.stop(0)

    with caplog.at_level(logging.DEBUG, logger="test.quiet"):
        asyncio.run(main())
    [record] = [r for r in caplog.records if r.name == "test.quiet"]
    assert record.method == "/grpc.health.v1.Health/Check" and record.levelno == logging.DEBUG
    assert sink.ends[0][3] == "OK"  # still counted
