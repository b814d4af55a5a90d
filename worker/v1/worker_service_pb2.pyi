from broker.v1 import resources_pb2 as _resources_pb2
from broker.v1 import worker_registry_service_pb2 as _worker_registry_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_COMPLETED: _ClassVar[JobStatus]
    JOB_STATUS_STOPPED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_COMPLETED: JobStatus
JOB_STATUS_STOPPED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus

class ExecuteRequest(_message.Message):
    __slots__ = ("voucher", "job")
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    voucher: str
    job: Job
    def __init__(self, voucher: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("generate", "burn", "handler")
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    BURN_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    generate: GenerateJob
    burn: BurnJob
    handler: HandlerJob
    def __init__(self, generate: _Optional[_Union[GenerateJob, _Mapping]] = ..., burn: _Optional[_Union[BurnJob, _Mapping]] = ..., handler: _Optional[_Union[HandlerJob, _Mapping]] = ...) -> None: ...

class GenerateJob(_message.Message):
    __slots__ = ("model", "prompt", "max_new_tokens", "temperature_milli", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MILLI_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    max_new_tokens: int
    temperature_milli: int
    seed: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., temperature_milli: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class BurnJob(_message.Message):
    __slots__ = ("duration_ms", "flops")
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    duration_ms: int
    flops: int
    def __init__(self, duration_ms: _Optional[int] = ..., flops: _Optional[int] = ...) -> None: ...

class HandlerJob(_message.Message):
    __slots__ = ("handler", "input")
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    handler: str
    input: bytes
    def __init__(self, handler: _Optional[str] = ..., input: _Optional[bytes] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("accepted", "output", "usage", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: JobAccepted
    output: JobOutput
    usage: JobUsage
    result: JobResult
    def __init__(self, accepted: _Optional[_Union[JobAccepted, _Mapping]] = ..., output: _Optional[_Union[JobOutput, _Mapping]] = ..., usage: _Optional[_Union[JobUsage, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ...) -> None: ...

class JobAccepted(_message.Message):
    __slots__ = ("job_id", "budget", "prices", "meter", "cached")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    METER_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    budget: int
    prices: _resources_pb2.PriceSheet
    meter: str
    cached: bool
    def __init__(self, job_id: _Optional[str] = ..., budget: _Optional[int] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., meter: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...

class JobOutput(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class JobUsage(_message.Message):
    __slots__ = ("usage", "charged", "remaining", "meter")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    METER_FIELD_NUMBER: _ClassVar[int]
    usage: _resources_pb2.Usage
    charged: int
    remaining: int
    meter: str
    def __init__(self, usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ..., charged: _Optional[int] = ..., remaining: _Optional[int] = ..., meter: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("status", "error", "usage", "receipt", "result_json", "cached", "meter")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    METER_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    error: str
    usage: _resources_pb2.Usage
    receipt: _resources_pb2.Receipt
    result_json: str
    cached: bool
    meter: str
    def __init__(self, status: _Optional[_Union[JobStatus, str]] = ..., error: _Optional[str] = ..., usage: _Optional[_Union[_resources_pb2.Usage, _Mapping]] = ..., receipt: _Optional[_Union[_resources_pb2.Receipt, _Mapping]] = ..., result_json: _Optional[str] = ..., cached: _Optional[bool] = ..., meter: _Optional[str] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("worker_id", "capabilities", "prices", "handlers", "usage_public_key")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    HANDLERS_FIELD_NUMBER: _ClassVar[int]
    USAGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    capabilities: _worker_registry_service_pb2.Capabilities
    prices: _resources_pb2.PriceSheet
    handlers: _containers.RepeatedScalarFieldContainer[str]
    usage_public_key: bytes
    def __init__(self, worker_id: _Optional[str] = ..., capabilities: _Optional[_Union[_worker_registry_service_pb2.Capabilities, _Mapping]] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., handlers: _Optional[_Iterable[str]] = ..., usage_public_key: _Optional[bytes] = ...) -> None: ...
