"""BrokerError -> gRPC status (AIP-193): ErrorInfo, BadRequest, RetryInfo, QuotaFailure."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .errors import BrokerError, Code

T = TypeVar("T", bound=Message)

DOMAIN = "broker.v1"

GRPC_CODES = {code: getattr(grpc.StatusCode, code.value) for code in Code}


def to_status(error: BrokerError, domain: str = DOMAIN) -> grpc.Status:
    return rpc_status.to_status(status_proto(error, domain))


def status_proto(error: BrokerError, domain: str = DOMAIN) -> status_pb2.Status:
    """The google.rpc.Status of `error` (to end a call with, or to put in a message)."""
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain,
                                       metadata=error.metadata)
    details.append(info)
    if error.field_violations:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in error.field_violations]))
    if error.retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(error.retry_after_ms)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if error.quota_violations:
        details.append(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
            for s, d in error.quota_violations]))
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    return status_pb2.Status(code=getattr(code_pb2, error.code.value),
                             message=error.message, details=packed)


def error_detail(rpc_error: grpc.RpcError, kind: type[T]) -> T | None:
    """One detail message of a failed call, e.g. error_detail(e, error_details_pb2.RetryInfo)."""
    status = rpc_status.from_call(rpc_error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None


def error_info(rpc_error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call (for clients and tests)."""
    return error_detail(rpc_error, error_details_pb2.ErrorInfo)
