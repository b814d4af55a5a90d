import datetime

from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_BUDGET_EXHAUSTED: _ClassVar[StopReason]
    STOP_REASON_HOLD_EXPIRING: _ClassVar[StopReason]
    STOP_REASON_REVOKED: _ClassVar[StopReason]
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_BUDGET_EXHAUSTED: StopReason
STOP_REASON_HOLD_EXPIRING: StopReason
STOP_REASON_REVOKED: StopReason

class MeterRequest(_message.Message):
    __slots__ = ("open", "resume", "usage", "finish")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    open: OpenSession
    resume: ResumeSession
    usage: UsageReport
    finish: FinishSession
    def __init__(self, open: _Optional[_Union[OpenSession, _Mapping]] = ..., resume: _Optional[_Union[ResumeSession, _Mapping]] = ..., usage: _Optional[_Union[UsageReport, _Mapping]] = ..., finish: _Optional[_Union[FinishSession, _Mapping]] = ...) -> None: ...

class OpenSession(_message.Message):
    __slots__ = ("request_id", "voucher", "worker_id", "resource_class", "model")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    voucher: str
    worker_id: str
    resource_class: str
    model: str
    def __init__(self, request_id: _Optional[str] = ..., voucher: _Optional[str] = ..., worker_id: _Optional[str] = ..., resource_class: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ResumeSession(_message.Message):
    __slots__ = ("session_id", "worker_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    worker_id: str
    def __init__(self, session_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("seq", "usage", "signature")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    usage: _resources_pb2.Usage
    signature: bytes
    def __init__(self, seq: _Optional[int] = ..., usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class FinishSession(_message.Message):
    __slots__ = ("usage", "signature")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    usage: _resources_pb2.Usage
    signature: bytes
    def __init__(self, usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MeterResponse(_message.Message):
    __slots__ = ("grant", "ack", "stop", "settled")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    grant: SessionGrant
    ack: UsageAck
    stop: StopCommand
    settled: SessionSettled
    def __init__(self, grant: _Optional[_Union[SessionGrant, _Mapping]] = ..., ack: _Optional[_Union[UsageAck, _Mapping]] = ..., stop: _Optional[_Union[StopCommand, _Mapping]] = ..., settled: _Optional[_Union[SessionSettled, _Mapping]] = ...) -> None: ...

class SessionGrant(_message.Message):
    __slots__ = ("session_id", "budget", "prices", "report_interval_ms", "expire_time", "charged", "last_seq", "usage", "stopped")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    budget: int
    prices: _resources_pb2.PriceSheet
    report_interval_ms: int
    expire_time: _timestamp_pb2.Timestamp
    charged: int
    last_seq: int
    usage: _resources_pb2.Usage
    stopped: bool
    def __init__(self, session_id: _Optional[str] = ..., budget: _Optional[int] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., report_interval_ms: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., charged: _Optional[int] = ..., last_seq: _Optional[int] = ..., usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ..., stopped: _Optional[bool] = ...) -> None: ...

class UsageAck(_message.Message):
    __slots__ = ("seq", "charged", "remaining")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    seq: int
    charged: int
    remaining: int
    def __init__(self, seq: _Optional[int] = ..., charged: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class StopCommand(_message.Message):
    __slots__ = ("reason", "charged", "remaining")
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    reason: StopReason
    charged: int
    remaining: int
    def __init__(self, reason: _Optional[_Union[StopReason, str]] = ..., charged: _Optional[int] = ..., remaining: _Optional[int] = ...) -> None: ...

class SessionSettled(_message.Message):
    __slots__ = ("receipt", "settle_time")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SETTLE_TIME_FIELD_NUMBER: _ClassVar[int]
    receipt: _resources_pb2.Receipt
    settle_time: _timestamp_pb2.Timestamp
    def __init__(self, receipt: _Optional[_Union[_resources_pb2.Receipt, _Mapping]] = ..., settle_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MeterWorkerRequest(_message.Message):
    __slots__ = ("worker_id", "batch_id", "opens", "resume_session_ids", "reports", "finishes", "signature")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OPENS_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    FINISHES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    batch_id: int
    opens: _containers.RepeatedCompositeFieldContainer[WorkerOpen]
    resume_session_ids: _containers.RepeatedScalarFieldContainer[str]
    reports: _containers.RepeatedCompositeFieldContainer[SessionUsageReport]
    finishes: _containers.RepeatedCompositeFieldContainer[SessionFinish]
    signature: bytes
    def __init__(self, worker_id: _Optional[str] = ..., batch_id: _Optional[int] = ..., opens: _Optional[_Iterable[_Union[WorkerOpen, _Mapping]]] = ..., resume_session_ids: _Optional[_Iterable[str]] = ..., reports: _Optional[_Iterable[_Union[SessionUsageReport, _Mapping]]] = ..., finishes: _Optional[_Iterable[_Union[SessionFinish, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WorkerOpen(_message.Message):
    __slots__ = ("ref", "open")
    REF_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ref: str
    open: OpenSession
    def __init__(self, ref: _Optional[str] = ..., open: _Optional[_Union[OpenSession, _Mapping]] = ...) -> None: ...

class SessionUsageReport(_message.Message):
    __slots__ = ("session_id", "seq", "usage")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    usage: _resources_pb2.Usage
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ...) -> None: ...

class SessionFinish(_message.Message):
    __slots__ = ("session_id", "finish")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    finish: FinishSession
    def __init__(self, session_id: _Optional[str] = ..., finish: _Optional[_Union[FinishSession, _Mapping]] = ...) -> None: ...

class MeterWorkerResponse(_message.Message):
    __slots__ = ("batch_id", "results", "early")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    results: _containers.RepeatedCompositeFieldContainer[SessionResult]
    early: bool
    def __init__(self, batch_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[SessionResult, _Mapping]]] = ..., early: _Optional[bool] = ...) -> None: ...

class SessionResult(_message.Message):
    __slots__ = ("session_id", "ref", "grant", "ack", "settled", "error", "stop")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ref: str
    grant: SessionGrant
    ack: UsageAck
    settled: SessionSettled
    error: _status_pb2.Status
    stop: StopCommand
    def __init__(self, session_id: _Optional[str] = ..., ref: _Optional[str] = ..., grant: _Optional[_Union[SessionGrant, _Mapping]] = ..., ack: _Optional[_Union[UsageAck, _Mapping]] = ..., settled: _Optional[_Union[SessionSettled, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., stop: _Optional[_Union[StopCommand, _Mapping]] = ...) -> None: ...
