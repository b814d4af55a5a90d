"""A recording gRPC proxy: put it between a worker and the broker, and it passes every
call through unchanged while keeping every message the worker receives (and sends),
as raw bytes, with each failed call's status and trailing metadata.

Every method is proxied as a bidirectional stream of raw bytes: on the wire a unary
call is a stream of one message, so one handler serves them all without knowing any
proto. Calls are tagged with the caller's bearer key, so the test can tell the
worker's calls from its own (WorkerProcess lists offers through the same address).

`break_next` injects a fault: the next call of a method fails, part way, with the status
the gRPC library makes up when a connection breaks under a call. `lose_next` loses one
chosen message from the broker (e.g. a settlement, sent after its commit): the call
fails instead of passing it on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc

from .broker_process import free_port


@dataclass(frozen=True)
class Captured:
    method: str  # "/broker.v1.MeteringService/Meter"
    direction: str  # "received" (broker -> worker), "sent", "status", "lost" (lose_next),
    # or "call" (one per call)
    data: bytes
    bearer: str  # the caller's API key, "" for none


class CapturingProxy:
    def __init__(self, upstream: str):
        self.target = f"127.0.0.1:{free_port()}"
        self.captured: list[Captured] = []
        # Fault injection: method -> the status every call to it gets, while it is here.
        self.refuse: dict[str, grpc.StatusCode] = {}
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[int, grpc.StatusCode, str]] = {}
        self._losses: dict[str, tuple[Callable[[bytes], bool], grpc.StatusCode, str]] = {}
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self._server.add_insecure_port(self.target)

    def start(self) -> CapturingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(2).wait()
        self._channel.close()

    def record(self, method: str, direction: str, data: bytes, bearer: str) -> None:
        with self._lock:
            self.captured.append(Captured(method, direction, data, bearer))

    def break_next(self, method: str, after: int, code: grpc.StatusCode, details: str) -> None:
        """Fail the next call of `method` with (code, details) once `after` messages have
        come back from the broker through it (the broker sees the call cancelled)."""
        with self._lock:
            self._faults[method] = (after, code, details)

    def lose_next(self, method: str, match: Callable[[bytes], bool],
                  code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                  details: str = "connection lost (test proxy)") -> None:
        """The next message from the broker on a call of `method` for which `match(raw)`
        holds is not passed on: the call fails with (code, details) instead, as if the
        connection broke just before that message got through."""
        with self._lock:
            self._losses[method] = (match, code, details)

    def take_loss(self, method: str, raw: bytes) -> tuple[grpc.StatusCode, str] | None:
        with self._lock:
            loss = self._losses.get(method)
            if loss is None or not loss[0](raw):
                return None
            del self._losses[method]
            return loss[1], loss[2]

    def take_fault(self, method: str) -> tuple[int, grpc.StatusCode, str] | None:
        with self._lock:
            return self._faults.pop(method, None)

    def calls(self, method: str) -> int:
        """How many calls of `method` went through."""
        with self._lock:
            return sum(1 for c in self.captured if c.method == method and c.direction == "call")

    def of(self, bearers: set[str]) -> list[Captured]:
        """What calls made with one of `bearers` ("" for none) carried."""
        with self._lock:
            return [c for c in self.captured if c.bearer in bearers]


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: CapturingProxy):
        self.proxy = proxy

    def service(self, details):
        method = details.method
        proxy = self.proxy

        def behaviour(request_iterator, context):
            metadata = tuple(context.invocation_metadata())
            bearer = next((v.partition(" ")[2] for k, v in metadata if k == "authorization"),
                          "")
            refused = proxy.refuse.get(method)
            if refused is not None:
                proxy.record(method, "status", b"refused by the proxy", bearer)
                context.abort(refused, "refused by the test proxy")
            proxy.record(method, "call", b"", bearer)
            fault = proxy.take_fault(method)

            def requests():
                for raw in request_iterator:
                    proxy.record(method, "sent", raw, bearer)
                    yield raw

            call = proxy._channel.stream_stream(method)(
                requests(), metadata=[(k, v) for k, v in metadata if not k.startswith(":")
                                      and k not in ("user-agent", "grpc-accept-encoding")])
            context.add_callback(call.cancel)
            try:
                for count, raw in enumerate(call, 1):
                    loss = proxy.take_loss(method, raw)
                    if loss is not None:
                        proxy.record(method, "lost", raw, bearer)
                        call.cancel()
                        context.abort(*loss)
                    proxy.record(method, "received", raw, bearer)
                    yield raw
                    if fault is not None and count >= fault[0]:
                        call.cancel()
                        context.abort(fault[1], fault[2])
            except grpc.RpcError as error:
                trailing = tuple(error.trailing_metadata() or ())
                details_text = error.details() or ""
                proxy.record(method, "status", details_text.encode() + b"".join(
                    v if isinstance(v, bytes) else v.encode() for _, v in trailing), bearer)
                if error.code() == grpc.StatusCode.CANCELLED:
                    return
                context.set_trailing_metadata(trailing)
                context.abort(error.code(), details_text)

        return grpc.stream_stream_rpc_method_handler(behaviour)
