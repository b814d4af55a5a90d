"""Bad bytes on the wire are bad input too: a request that does not decode gets
INVALID_ARGUMENT with ErrorInfo, where grpc.aio itself would answer UNKNOWN (and a
stream servicer would see an exception)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

from .errors import BrokerError, invalid
from .interceptors import WrappingInterceptor
from .status import DOMAIN, to_status


class _Undecodable:
    """What a request that is not a valid encoding of its message decodes to."""


def _lenient(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, bad UTF-8 in a string field, nesting too deep
            return _Undecodable()

    return decode


def _undecodable() -> BrokerError:
    return invalid("request", "is not a valid protobuf encoding of the request message")


class UndecodableRequestInterceptor(WrappingInterceptor):
    """Bad bytes on the wire are bad input too: INVALID_ARGUMENT with ErrorInfo, where
    grpc.aio itself answers UNKNOWN (and a stream servicer sees an exception)."""

    def __init__(self, domain: str = DOMAIN):
        super().__init__()
        self._domain = domain

    def _wrap(self, method: str, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        domain = self._domain
        original = (h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream)

        async def refuse(context, error: BrokerError) -> None:
            await context.abort_with_status(to_status(error, domain))

        if not h.request_streaming:
            async def check(request, context) -> None:
                if isinstance(request, _Undecodable):
                    await refuse(context, _undecodable())

            if inspect.isasyncgenfunction(original):
                async def behavior(request, context):
                    await check(request, context)
                    async for response in original(request, context):
                        yield response
            else:
                async def behavior(request, context):  # type: ignore[misc]  # stream or unary
                    await check(request, context)
                    result = original(request, context)
                    return await result if inspect.isawaitable(result) else result
        else:
            async def checked(requests):
                async for request in requests:
                    if isinstance(request, _Undecodable):
                        raise _undecodable()
                    yield request

            if inspect.isasyncgenfunction(original):
                async def behavior(requests, context):
                    try:
                        async for response in original(checked(requests), context):
                            yield response
                    except BrokerError as error:
                        await refuse(context, error)
            else:
                async def behavior(requests, context):  # type: ignore[misc]  # stream or unary
                    try:
                        result = original(checked(requests), context)
                        return await result if inspect.isawaitable(result) else result
                    except BrokerError as error:
                        await refuse(context, error)

        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return make[(h.request_streaming, h.response_streaming)](
            behavior, request_deserializer=_lenient(h.request_deserializer),
            response_serializer=h.response_serializer)
