"""Errors the core raises. The API layer maps them to gRPC status + ErrorInfo.

Each error has a canonical code (named like gRPC's, but the core imports no gRPC)
and a stable machine-readable reason, one of the enum broker.v1.ErrorReason
(protos/broker/v1/error_reason.proto): an error with another reason, or with a code
the enum does not give its reason, cannot be made. docs/errors.md is generated from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from google.rpc import code_pb2

from broker.v1 import error_reason_pb2


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    ABORTED = "ABORTED"  # a concurrency conflict (AIP-193): a fenced metering stream
    UNAVAILABLE = "UNAVAILABLE"


class ReasonInfo(NamedTuple):
    codes: tuple[str, ...]  # gRPC status code names
    transient: bool


def _reasons() -> dict[str, ReasonInfo]:
    prefix = "ERROR_REASON_"
    out = {}
    for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values:
        if value.number:
            info = value.GetOptions().Extensions[error_reason_pb2.reason_info]
            out[value.name.removeprefix(prefix)] = ReasonInfo(
                tuple(code_pb2.Code.Name(c) for c in info.codes), info.transient)
    return out


# Every reason on the wire (ErrorInfo.reason), in the enum's order.
REASONS: dict[str, ReasonInfo] = _reasons()


@dataclass
class BrokerError(Exception):
    code: Code
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    # (field path, description) pairs for google.rpc.BadRequest.
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    # google.rpc.RetryInfo: how long to wait before retrying (rate limits, unavailability).
    retry_after_ms: int | None = None
    # (subject, description) pairs for google.rpc.QuotaFailure (budget and rate limits).
    quota_violations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        info = REASONS.get(self.reason)
        if info is None or self.code.value not in info.codes:
            raise ValueError(f"{self.reason} with {self.code.value} is not in the enum "
                             "broker.v1.ErrorReason (protos/broker/v1/error_reason.proto)")

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid(field_path: str, message: str, reason: str = "INVALID_ARGUMENT") -> BrokerError:
    return BrokerError(Code.INVALID_ARGUMENT, reason, f"{field_path}: {message}",
                       {"field": field_path}, [(field_path, message)])


def not_found(kind: str, ident: str) -> BrokerError:
    # The id is echoed back: ids are not secrets, and it helps the caller.
    return BrokerError(Code.NOT_FOUND, f"{kind.upper()}_NOT_FOUND",
                       f"{kind} {ident!r} not found", {kind: ident})


def denied(message: str, reason: str = "PERMISSION_DENIED") -> BrokerError:
    return BrokerError(Code.PERMISSION_DENIED, reason, message)


def precondition(reason: str, message: str, **metadata: str) -> BrokerError:
    return BrokerError(Code.FAILED_PRECONDITION, reason, message, dict(metadata))
