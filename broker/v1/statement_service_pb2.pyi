import datetime

from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatementGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATEMENT_GRANULARITY_UNSPECIFIED: _ClassVar[StatementGranularity]
    STATEMENT_GRANULARITY_HOUR: _ClassVar[StatementGranularity]
    STATEMENT_GRANULARITY_DAY: _ClassVar[StatementGranularity]
STATEMENT_GRANULARITY_UNSPECIFIED: StatementGranularity
STATEMENT_GRANULARITY_HOUR: StatementGranularity
STATEMENT_GRANULARITY_DAY: StatementGranularity

class ReceiptKey(_message.Message):
    __slots__ = ("key_id", "public_key", "create_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterReceiptKeyRequest(_message.Message):
    __slots__ = ("request_id", "public_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    public_key: bytes
    def __init__(self, request_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class RegisterReceiptKeyResponse(_message.Message):
    __slots__ = ("receipt_key",)
    RECEIPT_KEY_FIELD_NUMBER: _ClassVar[int]
    receipt_key: ReceiptKey
    def __init__(self, receipt_key: _Optional[_Union[ReceiptKey, _Mapping]] = ...) -> None: ...

class GetReceiptKeyRequest(_message.Message):
    __slots__ = ("owner_id",)
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    def __init__(self, owner_id: _Optional[str] = ...) -> None: ...

class GetReceiptKeyResponse(_message.Message):
    __slots__ = ("receipt_key",)
    RECEIPT_KEY_FIELD_NUMBER: _ClassVar[int]
    receipt_key: ReceiptKey
    def __init__(self, receipt_key: _Optional[_Union[ReceiptKey, _Mapping]] = ...) -> None: ...

class ListReceiptsRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListReceiptsResponse(_message.Message):
    __slots__ = ("receipts", "next_page_token")
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Receipt]
    next_page_token: str
    def __init__(self, receipts: _Optional[_Iterable[_Union[_resources_pb2.Receipt, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStatementRequest(_message.Message):
    __slots__ = ("owner_id", "period_start", "period_end", "granularity", "include_annex")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ANNEX_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    granularity: StatementGranularity
    include_annex: bool
    def __init__(self, owner_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[StatementGranularity, str]] = ..., include_annex: _Optional[bool] = ...) -> None: ...

class GetStatementResponse(_message.Message):
    __slots__ = ("statement",)
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    statement: Statement
    def __init__(self, statement: _Optional[_Union[Statement, _Mapping]] = ...) -> None: ...

class WalletTotal(_message.Message):
    __slots__ = ("wallet_id", "charged", "released", "job_count", "parent_wallet_id", "depth", "rollup_charged", "rollup_released", "rollup_job_count", "refunded", "rollup_refunded")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARENT_WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_CHARGED_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_RELEASED_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    charged: int
    released: int
    job_count: int
    parent_wallet_id: str
    depth: int
    rollup_charged: int
    rollup_released: int
    rollup_job_count: int
    refunded: int
    rollup_refunded: int
    def __init__(self, wallet_id: _Optional[str] = ..., charged: _Optional[int] = ..., released: _Optional[int] = ..., job_count: _Optional[int] = ..., parent_wallet_id: _Optional[str] = ..., depth: _Optional[int] = ..., rollup_charged: _Optional[int] = ..., rollup_released: _Optional[int] = ..., rollup_job_count: _Optional[int] = ..., refunded: _Optional[int] = ..., rollup_refunded: _Optional[int] = ...) -> None: ...

class PaymentModelTotal(_message.Message):
    __slots__ = ("payment_model", "charged", "job_count", "refunded")
    PAYMENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    payment_model: str
    charged: int
    job_count: int
    refunded: int
    def __init__(self, payment_model: _Optional[str] = ..., charged: _Optional[int] = ..., job_count: _Optional[int] = ..., refunded: _Optional[int] = ...) -> None: ...

class Statement(_message.Message):
    __slots__ = ("owner_id", "period_start", "period_end", "granularity", "wallets", "payment_models", "total_charged", "total_released", "job_count", "annex", "receipt_key_id", "key_id", "signature", "signed_payload", "total_refunded")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    WALLETS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_MODELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHARGED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RELEASED_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    ANNEX_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    granularity: StatementGranularity
    wallets: _containers.RepeatedCompositeFieldContainer[WalletTotal]
    payment_models: _containers.RepeatedCompositeFieldContainer[PaymentModelTotal]
    total_charged: int
    total_released: int
    job_count: int
    annex: bytes
    receipt_key_id: str
    key_id: str
    signature: bytes
    signed_payload: bytes
    total_refunded: int
    def __init__(self, owner_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[StatementGranularity, str]] = ..., wallets: _Optional[_Iterable[_Union[WalletTotal, _Mapping]]] = ..., payment_models: _Optional[_Iterable[_Union[PaymentModelTotal, _Mapping]]] = ..., total_charged: _Optional[int] = ..., total_released: _Optional[int] = ..., job_count: _Optional[int] = ..., annex: _Optional[bytes] = ..., receipt_key_id: _Optional[str] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ..., total_refunded: _Optional[int] = ...) -> None: ...

class GetPayoutStatementRequest(_message.Message):
    __slots__ = ("provider_id", "period_start", "period_end", "granularity")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    granularity: StatementGranularity
    def __init__(self, provider_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[StatementGranularity, str]] = ...) -> None: ...

class GetPayoutStatementResponse(_message.Message):
    __slots__ = ("statement",)
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    statement: PayoutStatement
    def __init__(self, statement: _Optional[_Union[PayoutStatement, _Mapping]] = ...) -> None: ...

class PayoutPeriod(_message.Message):
    __slots__ = ("period_start", "period_end", "charged", "payout", "platform_fee", "job_count", "refunded_payout", "refunded_fee")
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    PAYOUT_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FEE_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_PAYOUT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FEE_FIELD_NUMBER: _ClassVar[int]
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    charged: int
    payout: int
    platform_fee: int
    job_count: int
    refunded_payout: int
    refunded_fee: int
    def __init__(self, period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., charged: _Optional[int] = ..., payout: _Optional[int] = ..., platform_fee: _Optional[int] = ..., job_count: _Optional[int] = ..., refunded_payout: _Optional[int] = ..., refunded_fee: _Optional[int] = ...) -> None: ...

class PayoutStatement(_message.Message):
    __slots__ = ("provider_id", "period_start", "period_end", "granularity", "periods", "total_charged", "total_payout", "total_platform_fee", "job_count", "key_id", "signature", "signed_payload", "total_refunded_payout", "total_refunded_fee")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHARGED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PLATFORM_FEE_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REFUNDED_PAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REFUNDED_FEE_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    granularity: StatementGranularity
    periods: _containers.RepeatedCompositeFieldContainer[PayoutPeriod]
    total_charged: int
    total_payout: int
    total_platform_fee: int
    job_count: int
    key_id: str
    signature: bytes
    signed_payload: bytes
    total_refunded_payout: int
    total_refunded_fee: int
    def __init__(self, provider_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., granularity: _Optional[_Union[StatementGranularity, str]] = ..., periods: _Optional[_Iterable[_Union[PayoutPeriod, _Mapping]]] = ..., total_charged: _Optional[int] = ..., total_payout: _Optional[int] = ..., total_platform_fee: _Optional[int] = ..., job_count: _Optional[int] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ..., total_refunded_payout: _Optional[int] = ..., total_refunded_fee: _Optional[int] = ...) -> None: ...

class ReceiptSigningKey(_message.Message):
    __slots__ = ("key_id", "public_key", "active", "create_time", "retire_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RETIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    active: bool
    create_time: _timestamp_pb2.Timestamp
    retire_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., active: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListReceiptSigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReceiptSigningKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ReceiptSigningKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ReceiptSigningKey, _Mapping]]] = ...) -> None: ...

class RotateReceiptSigningKeyRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class RotateReceiptSigningKeyResponse(_message.Message):
    __slots__ = ("key", "previous_key_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key: ReceiptSigningKey
    previous_key_id: str
    def __init__(self, key: _Optional[_Union[ReceiptSigningKey, _Mapping]] = ..., previous_key_id: _Optional[str] = ...) -> None: ...
