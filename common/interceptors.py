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
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
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
    """One RPC in flight: its first request and response (whose ids the log line
    carries, read only when it is written), start time and kind."""

    __slots__ = ("m", "first_request", "first_response", "start")

    def __init__(self, method: _Method):
        self.m = method
        self.first_request: Any = None
        self.first_response: Any = None
        self.start = time.perf_counter()
        method.observer.started(method.kind, method.service, method.name)

    def done(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        seconds = time.perf_counter() - self.start
        m = self.m
        status = _code(context, error)
        code = status.name
        m.observer.handled(m.kind, m.service, m.name, code, seconds)
        if m.quiet:
            level = logging.DEBUG
        elif status in SERVER_FAULTS:
            level = logging.WARNING
        else:
            level = logging.INFO
        if not m.log.isEnabledFor(level):  # (the ids are read only for a line written)
            return
        ids: dict[str, str] = {}
        message_ids(self.first_request, ids)
        message_ids(self.first_response, ids)
        m.log.log(level, "rpc", extra={"method": m.method, "code": code,
                                       "duration_ms": round(seconds * 1000, 3), **ids})


class _Method:
    """What every call of one method shares: its names, kind, observer and logger."""

    __slots__ = ("method", "kind", "service", "name", "observer", "log", "quiet")

    def __init__(self, interceptor: ObservingInterceptor, method: str, kind: str):
        self.method = method
        self.kind = kind
        self.service, _, self.name = method.lstrip("/").rpartition("/")
        self.observer = interceptor.observer
        self.log = interceptor.log
        self.quiet = method in interceptor.quiet


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
        return self.wrap(handler_call_details.method, handler)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped = self._handlers.get(method)
        if wrapped is None:
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class WrappedHandlers(grpc.GenericRpcHandler):
    """Generic handlers with `interceptors` applied at the lookup, once per method,
    instead of through grpc.aio's interceptor chain, which awaits every interceptor's
    `intercept_service` on every call. Same order as `grpc.aio.server(interceptors=...)`:
    the first one sees the call first. Give the server this and no interceptors."""

    def __init__(self, handlers: Sequence[grpc.GenericRpcHandler],
                 interceptors: Sequence[WrappingInterceptor]) -> None:
        self._handlers = list(handlers)
        self._interceptors = list(reversed(interceptors))  # the innermost wraps first
        self._methods: dict[str, grpc.RpcMethodHandler] = {}  # only methods served

    def service(self, handler_call_details):
        method = handler_call_details.method
        wrapped = self._methods.get(method)
        if wrapped is None:
            for generic in self._handlers:
                wrapped = generic.service(handler_call_details)
                if wrapped is not None:
                    break
            else:
                return None  # unknown method: UNIMPLEMENTED, as without interceptors
            for interceptor in self._interceptors:
                wrapped = interceptor.wrap(method, wrapped)
            self._methods[method] = wrapped
        return wrapped


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
        m = _Method(self, method, kind)

        def first_request(call: _Call, request: Any) -> Any:
            if h.request_streaming:
                return _FirstRequest(call, request)
            call.first_request = request
            return request

        if inspect.isasyncgenfunction(original):
            async def behavior(request, context):
                call = _Call(m)
                error = None
                first = True
                try:
                    async for response in original(first_request(call, request), context):
                        if first:
                            call.first_response = response
                            first = False
                        yield response
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    call.done(context, error)
        else:
            async def behavior(request, context):  # type: ignore[misc]  # stream or unary
                call = _Call(m)
                error = None
                try:
                    result = original(first_request(call, request), context)
                    if inspect.isawaitable(result):
                        result = await result
                    call.first_response = result
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


class _FirstRequest:
    """A request stream that notes its first message on the call, then hands each
    message straight through (no generator frame per message)."""

    __slots__ = ("_requests", "_call")

    def __init__(self, call: _Call, requests: AsyncIterator) -> None:
        self._requests = aiter(requests)
        self._call: _Call | None = call

    def __aiter__(self) -> _FirstRequest:
        return self

    def __anext__(self) -> Awaitable[Any]:
        if self._call is None:
            return self._requests.__anext__()
        return self._first()

    async def _first(self) -> Any:
        request = await self._requests.__anext__()
        if self._call is not None:
            self._call.first_request = request
            self._call = None
        return request
