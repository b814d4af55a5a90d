import datetime

from broker.v1 import pricing_pb2 as _pricing_pb2
from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuthorizationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTHORIZATION_STATE_UNSPECIFIED: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_HELD: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_REDEEMED: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_SETTLED: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_CANCELLED: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_EXPIRED: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_PENDING_APPROVAL: _ClassVar[AuthorizationState]
    AUTHORIZATION_STATE_DENIED: _ClassVar[AuthorizationState]
AUTHORIZATION_STATE_UNSPECIFIED: AuthorizationState
AUTHORIZATION_STATE_HELD: AuthorizationState
AUTHORIZATION_STATE_REDEEMED: AuthorizationState
AUTHORIZATION_STATE_SETTLED: AuthorizationState
AUTHORIZATION_STATE_CANCELLED: AuthorizationState
AUTHORIZATION_STATE_EXPIRED: AuthorizationState
AUTHORIZATION_STATE_PENDING_APPROVAL: AuthorizationState
AUTHORIZATION_STATE_DENIED: AuthorizationState

class Authorization(_message.Message):
    __slots__ = ("authorization_id", "wallet_id", "amount", "scope", "state", "voucher", "expire_time", "create_time", "charged", "receipt_id", "labels", "quote_id", "offers", "lease_id", "mandate_hash")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_HASH_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    wallet_id: str
    amount: int
    scope: _resources_pb2.Scope
    state: AuthorizationState
    voucher: str
    expire_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    charged: int
    receipt_id: str
    labels: _containers.ScalarMap[str, str]
    quote_id: str
    offers: _containers.RepeatedCompositeFieldContainer[_pricing_pb2.BoundOffer]
    lease_id: str
    mandate_hash: str
    def __init__(self, authorization_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., amount: _Optional[int] = ..., scope: _Optional[_Union[_resources_pb2.Scope, _Mapping]] = ..., state: _Optional[_Union[AuthorizationState, str]] = ..., voucher: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., charged: _Optional[int] = ..., receipt_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., quote_id: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[_pricing_pb2.BoundOffer, _Mapping]]] = ..., lease_id: _Optional[str] = ..., mandate_hash: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("request_id", "amount", "scope", "ttl_seconds", "cache_results", "labels", "quote_id", "select_best_offer", "holder_public_key", "mandate")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_BEST_OFFER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MANDATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    amount: int
    scope: _resources_pb2.Scope
    ttl_seconds: int
    cache_results: bool
    labels: _containers.ScalarMap[str, str]
    quote_id: str
    select_best_offer: bool
    holder_public_key: bytes
    mandate: str
    def __init__(self, request_id: _Optional[str] = ..., amount: _Optional[int] = ..., scope: _Optional[_Union[_resources_pb2.Scope, _Mapping]] = ..., ttl_seconds: _Optional[int] = ..., cache_results: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., quote_id: _Optional[str] = ..., select_best_offer: _Optional[bool] = ..., holder_public_key: _Optional[bytes] = ..., mandate: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class GetAuthorizationRequest(_message.Message):
    __slots__ = ("authorization_id",)
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    def __init__(self, authorization_id: _Optional[str] = ...) -> None: ...

class GetAuthorizationResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class ListAuthorizationsRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuthorizationsResponse(_message.Message):
    __slots__ = ("authorizations", "next_page_token")
    AUTHORIZATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    authorizations: _containers.RepeatedCompositeFieldContainer[Authorization]
    next_page_token: str
    def __init__(self, authorizations: _Optional[_Iterable[_Union[Authorization, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelAuthorizationRequest(_message.Message):
    __slots__ = ("request_id", "authorization_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    authorization_id: str
    def __init__(self, request_id: _Optional[str] = ..., authorization_id: _Optional[str] = ...) -> None: ...

class CancelAuthorizationResponse(_message.Message):
    __slots__ = ("authorization",)
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    authorization: Authorization
    def __init__(self, authorization: _Optional[_Union[Authorization, _Mapping]] = ...) -> None: ...

class GetReceiptRequest(_message.Message):
    __slots__ = ("authorization_id",)
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    def __init__(self, authorization_id: _Optional[str] = ...) -> None: ...

class GetReceiptResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _resources_pb2.Receipt
    def __init__(self, receipt: _Optional[_Union[_resources_pb2.Receipt, _Mapping]] = ...) -> None: ...
