import datetime

from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capabilities(_message.Message):
    __slots__ = ("resource_class", "gpu_name", "gpu_memory_bytes", "models", "meter", "gpu_uuid", "driver_version", "energy_supported", "model_sizes")
    RESOURCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    METER_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZES_FIELD_NUMBER: _ClassVar[int]
    resource_class: str
    gpu_name: str
    gpu_memory_bytes: int
    models: _containers.RepeatedScalarFieldContainer[str]
    meter: str
    gpu_uuid: str
    driver_version: str
    energy_supported: bool
    model_sizes: _containers.RepeatedCompositeFieldContainer[ModelSize]
    def __init__(self, resource_class: _Optional[str] = ..., gpu_name: _Optional[str] = ..., gpu_memory_bytes: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., meter: _Optional[str] = ..., gpu_uuid: _Optional[str] = ..., driver_version: _Optional[str] = ..., energy_supported: _Optional[bool] = ..., model_sizes: _Optional[_Iterable[_Union[ModelSize, _Mapping]]] = ...) -> None: ...

class ModelSize(_message.Message):
    __slots__ = ("model", "parameters")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    model: str
    parameters: int
    def __init__(self, model: _Optional[str] = ..., parameters: _Optional[int] = ...) -> None: ...

class RegisterWorkerRequest(_message.Message):
    __slots__ = ("request_id", "endpoint", "capabilities", "prices", "worker_id", "usage_public_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    endpoint: str
    capabilities: Capabilities
    prices: _resources_pb2.PriceSheet
    worker_id: str
    usage_public_key: bytes
    def __init__(self, request_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., worker_id: _Optional[str] = ..., usage_public_key: _Optional[bytes] = ...) -> None: ...

class RegisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id", "heartbeat_interval_seconds", "lease_expire_time")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_interval_seconds: int
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_expire_time",)
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    lease_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeregisterWorkerRequest(_message.Message):
    __slots__ = ("request_id", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class DeregisterWorkerResponse(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class ListOffersRequest(_message.Message):
    __slots__ = ("resource_class", "model")
    RESOURCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    resource_class: str
    model: str
    def __init__(self, resource_class: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("worker_id", "endpoint", "capabilities", "prices", "usage_public_key")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    endpoint: str
    capabilities: Capabilities
    prices: _resources_pb2.PriceSheet
    usage_public_key: bytes
    def __init__(self, worker_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., usage_public_key: _Optional[bytes] = ...) -> None: ...

class ListOffersResponse(_message.Message):
    __slots__ = ("offers", "platform_fee_bps")
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FEE_BPS_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    platform_fee_bps: int
    def __init__(self, offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ..., platform_fee_bps: _Optional[int] = ...) -> None: ...
