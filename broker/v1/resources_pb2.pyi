import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Balance(_message.Message):
    __slots__ = ("posted", "pending", "available", "credits")
    POSTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    posted: int
    pending: int
    available: int
    credits: int
    def __init__(self, posted: _Optional[int] = ..., pending: _Optional[int] = ..., available: _Optional[int] = ..., credits: _Optional[int] = ...) -> None: ...

class PriceSheet(_message.Message):
    __slots__ = ("gpu_second_price", "input_tokens_1k_price", "output_tokens_1k_price", "call_price", "reserved_hour_price", "unused_reserved_bps")
    GPU_SECOND_PRICE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_1K_PRICE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_1K_PRICE_FIELD_NUMBER: _ClassVar[int]
    CALL_PRICE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_HOUR_PRICE_FIELD_NUMBER: _ClassVar[int]
    UNUSED_RESERVED_BPS_FIELD_NUMBER: _ClassVar[int]
    gpu_second_price: int
    input_tokens_1k_price: int
    output_tokens_1k_price: int
    call_price: int
    reserved_hour_price: int
    unused_reserved_bps: int
    def __init__(self, gpu_second_price: _Optional[int] = ..., input_tokens_1k_price: _Optional[int] = ..., output_tokens_1k_price: _Optional[int] = ..., call_price: _Optional[int] = ..., reserved_hour_price: _Optional[int] = ..., unused_reserved_bps: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("gpu_ms", "input_tokens", "output_tokens", "calls", "energy_mj")
    GPU_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MJ_FIELD_NUMBER: _ClassVar[int]
    gpu_ms: int
    input_tokens: int
    output_tokens: int
    calls: int
    energy_mj: int
    def __init__(self, gpu_ms: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., calls: _Optional[int] = ..., energy_mj: _Optional[int] = ...) -> None: ...

class Scope(_message.Message):
    __slots__ = ("resource_class", "model", "max_prices", "worker_id", "cache_scope", "worker_ids")
    RESOURCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICES_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_SCOPE_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    resource_class: str
    model: str
    max_prices: PriceSheet
    worker_id: str
    cache_scope: str
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource_class: _Optional[str] = ..., model: _Optional[str] = ..., max_prices: _Optional[_Union[PriceSheet, _Mapping]] = ..., worker_id: _Optional[str] = ..., cache_scope: _Optional[str] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("receipt_id", "authorization_id", "session_id", "held", "charged", "worker_payout", "platform_fee", "released", "usage", "prices", "outcome", "settle_time", "key_id", "signature", "signed_payload", "worker_usage_payload", "worker_usage_signature", "period_start", "period_end", "sealed_itemised", "receipt_key_id", "worker_usage_batch", "mandate_hash", "wallet_id")
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    WORKER_PAYOUT_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FEE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SETTLE_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    SEALED_ITEMISED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_BATCH_FIELD_NUMBER: _ClassVar[int]
    MANDATE_HASH_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    receipt_id: str
    authorization_id: str
    session_id: str
    held: int
    charged: int
    worker_payout: int
    platform_fee: int
    released: int
    usage: Usage
    prices: PriceSheet
    outcome: str
    settle_time: _timestamp_pb2.Timestamp
    key_id: str
    signature: bytes
    signed_payload: bytes
    worker_usage_payload: bytes
    worker_usage_signature: bytes
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    sealed_itemised: bytes
    receipt_key_id: str
    worker_usage_batch: bytes
    mandate_hash: str
    wallet_id: str
    def __init__(self, receipt_id: _Optional[str] = ..., authorization_id: _Optional[str] = ..., session_id: _Optional[str] = ..., held: _Optional[int] = ..., charged: _Optional[int] = ..., worker_payout: _Optional[int] = ..., platform_fee: _Optional[int] = ..., released: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., prices: _Optional[_Union[PriceSheet, _Mapping]] = ..., outcome: _Optional[str] = ..., settle_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ..., worker_usage_payload: _Optional[bytes] = ..., worker_usage_signature: _Optional[bytes] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sealed_itemised: _Optional[bytes] = ..., receipt_key_id: _Optional[str] = ..., worker_usage_batch: _Optional[bytes] = ..., mandate_hash: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...
