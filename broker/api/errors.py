"""BrokerError -> gRPC status with google.rpc.ErrorInfo (AIP-193) and BadRequest."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..core.errors import BrokerError, Code

DOMAIN = "broker.v1"

GRPC_CODES = {code: getattr(grpc.StatusCode, code.value) for code in Code}


def to_status(error: BrokerError, domain: str = DOMAIN) -> grpc.Status:
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain,
                                       metadata=error.metadata)
    details.append(info)
    if error.field_violations:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in error.field_violations]))
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    status = status_pb2.Status(code=getattr(code_pb2, error.code.value),
                               message=error.message, details=packed)
    return rpc_status.to_status(status)


def error_info(rpc_error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a failed call (for clients and tests)."""
    status = rpc_status.from_call(rpc_error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
