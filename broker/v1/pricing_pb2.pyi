from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BoundOffer(_message.Message):
    __slots__ = ("worker_id", "endpoint", "model", "prices")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    endpoint: str
    model: str
    prices: _resources_pb2.PriceSheet
    def __init__(self, worker_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., model: _Optional[str] = ..., prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ...) -> None: ...
