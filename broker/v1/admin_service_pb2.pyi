from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
    ROLE_OWNER: _ClassVar[Role]
    ROLE_AGENT: _ClassVar[Role]
    ROLE_WORKER: _ClassVar[Role]
    ROLE_AUDITOR: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_ADMIN: Role
ROLE_OWNER: Role
ROLE_AGENT: Role
ROLE_WORKER: Role
ROLE_AUDITOR: Role

class CreateOwnerRequest(_message.Message):
    __slots__ = ("request_id", "display_name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    display_name: str
    def __init__(self, request_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class CreateOwnerResponse(_message.Message):
    __slots__ = ("owner_id", "treasury_account_id")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    TREASURY_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    treasury_account_id: str
    def __init__(self, owner_id: _Optional[str] = ..., treasury_account_id: _Optional[str] = ...) -> None: ...

class CreditTreasuryRequest(_message.Message):
    __slots__ = ("request_id", "owner_id", "amount")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    owner_id: str
    amount: int
    def __init__(self, request_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class CreditTreasuryResponse(_message.Message):
    __slots__ = ("transfer_id", "treasury_balance")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    TREASURY_BALANCE_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    treasury_balance: _resources_pb2.Balance
    def __init__(self, transfer_id: _Optional[str] = ..., treasury_balance: _Optional[_Union[_resources_pb2.Balance, _Mapping]] = ...) -> None: ...

class CreateProviderRequest(_message.Message):
    __slots__ = ("request_id", "display_name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    display_name: str
    def __init__(self, request_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class CreateProviderResponse(_message.Message):
    __slots__ = ("provider_id", "payout_account_id")
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYOUT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    provider_id: str
    payout_account_id: str
    def __init__(self, provider_id: _Optional[str] = ..., payout_account_id: _Optional[str] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("request_id", "role", "owner_id", "wallet_id", "provider_id", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    role: Role
    owner_id: str
    wallet_id: str
    provider_id: str
    description: str
    def __init__(self, request_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., owner_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key_id", "api_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    api_key: str
    def __init__(self, key_id: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("request_id", "key_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    key_id: str
    def __init__(self, request_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetLedgerSummaryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLedgerSummaryResponse(_message.Message):
    __slots__ = ("debits_pending", "credits_pending", "debits_posted", "credits_posted", "account_count", "transfer_count", "journal_length", "violations")
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_COUNT_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    debits_pending: int
    credits_pending: int
    debits_posted: int
    credits_posted: int
    account_count: int
    transfer_count: int
    journal_length: int
    violations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, debits_pending: _Optional[int] = ..., credits_pending: _Optional[int] = ..., debits_posted: _Optional[int] = ..., credits_posted: _Optional[int] = ..., account_count: _Optional[int] = ..., transfer_count: _Optional[int] = ..., journal_length: _Optional[int] = ..., violations: _Optional[_Iterable[str]] = ...) -> None: ...
