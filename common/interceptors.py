"""One log line and the RPC metrics for every call, unary or streaming (grpc.aio).

The line carries the method, the final status code, the latency, and the ids found in
the request and the first response (AIP-155 request_id, authorization, session, job
...). Ids come from an allow-list of field names, so a voucher, an API key or a usage
signature can never end up in it; metadata (where the `authorization` header lives) is
never read.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

ID_FIELDS = frozenset({"request_id", "authorization_id", "session_id", "receipt_id",
                       "wallet_id", "owner_id", "provider_id", "worker_id", "job_id"})

# Polled constantly; logged at DEBUG so that INFO stays readable.
QUIET_METHODS = frozenset({
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/broker.v1.WorkerRegistryService/Heartbeat"})

DEADLINE_SLACK_S = 0.1

# Codes that point at the server rather than the caller.
SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                           grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED})


class RpcObserver(Protocol):
    """Where the RPC metrics go (common.metrics.RpcMetrics)."""

    def started(self, kind: str, service: str, method: str) -> None: ...

    def handled(self, kind: str, service: str, method: str, code: str,
                seconds: float) -> None: ...


def message_ids(message: Any, out: dict[str, str]) -> None:
    """Add the allow-listed ids of `message` and of its set sub-messages (one level)."""
    if not isinstance(message, Message):
        return
    nested = []
    for descriptor, value in message.ListFields():
        if descriptor.name in ID_FIELDS and isinstance(value, str) and value:
            out.setdefault(descriptor.name, value[:100])
        elif isinstance(value, Message):
            nested.append(value)
    for sub in nested:
        for descriptor, value in sub.ListFields():
            if descriptor.name in ID_FIELDS and isinstance(value, str) and value:
                out.setdefault(descriptor.name, value[:100])


def _kind(h: grpc.RpcMethodHandler) -> str:
    return {(False, False): "unary", (False, True): "server_stream",
            (True, False): "client_stream", (True, True): "bidi_stream"}[
        (h.request_streaming, h.response_streaming)]


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status the client gets (grpc.aio answers an unexpected exception UNKNOWN)."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.OK
    if isinstance(error, Exception):
        return grpc.StatusCode.UNKNOWN
    # CancelledError or GeneratorExit: the caller hung up, or its deadline passed (the
    # caller's timer usually fires first, so the server may see a few ms still left).
    remaining = context.time_remaining()
    if remaining is not None and remaining < DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Call:
    """One RPC in flight: its ids, start time and kind."""

    def __init__(self, interceptor: ObservingInterceptor, method: str, kind: str):
        self.i = interceptor
        self.method = method
        self.kind = kind
        self.service, _, self.name = method.lstrip("/").rpartition("/")
        self.ids: dict[str, str] = {}
        self.start = time.perf_counter()
        self.i.observer.started(kind, self.service, self.name)

    def done(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        seconds = time.perf_counter() - self.start
        status = _code(context, error)
        code = status.name
        self.i.observer.handled(self.kind, self.service, self.name, code, seconds)
        if self.method in self.i.quiet:
            level = logging.DEBUG
        elif status in SERVER_FAULTS:
            level = logging.WARNING
        else:
            level = logging.INFO
        self.i.log.log(level, "rpc", extra={"method": self.method, "code": code,
                                            "duration_ms": round(seconds * 1000, 3),
                                            **self.ids})


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once, with `_wrap`, and reuses the wrapper."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    @property
    def wrapped(self) -> int:
        """Handlers wrapped so far: at most one per method the server serves."""
        return len(self._handlers)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ObservingInterceptor(WrappingInterceptor):
    """Put it first in the server's interceptors, so that it sees every outcome."""

    def __init__(self, observer: RpcObserver, logger: logging.Logger,
                 quiet: Collection[str] = QUIET_METHODS):
        super().__init__()
        self.observer = observer
        self.log = logger
        self.quiet = quiet

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        original = h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream
        kind = _kind(h)

        def first_request(call: _Call, request: Any) -> Any:
            if h.request_streaming:
                return _peek_requests(call, request)
            message_ids(request, call.ids)
            return request

        if inspect.isasyncgenfunction(original):
            async def behavior(request, context):
                call = _Call(self, method, kind)
                error = None
                first = True
                try:
                    async for response in original(first_request(call, request), context):
                        if first:
                            message_ids(response, call.ids)
                            first = False
                        yield response
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    call.done(context, error)
        else:
            async def behavior(request, context):  # type: ignore[misc]  # stream or unary
                call = _Call(self, method, kind)
                error = None
                try:
                    result = original(first_request(call, request), context)
                    if inspect.isawaitable(result):
                        result = await result
                    message_ids(result, call.ids)
                    return result
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    call.done(context, error)

        make = {"unary": grpc.unary_unary_rpc_method_handler,
                "server_stream": grpc.unary_stream_rpc_method_handler,
                "client_stream": grpc.stream_unary_rpc_method_handler,
                "bidi_stream": grpc.stream_stream_rpc_method_handler}[kind]
        return make(behavior, request_deserializer=h.request_deserializer,
                    response_serializer=h.response_serializer)


async def _peek_requests(call: _Call, requests: AsyncIterator) -> AsyncIterator:
    first = True
    async for request in requests:
        if first:
            message_ids(request, call.ids)
            first = False
        yield request
