import datetime

from broker.v1 import policy_service_pb2 as _policy_service_pb2
from broker.v1 import resources_pb2 as _resources_pb2
from broker.v1 import wallet_service_pb2 as _wallet_service_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentKey(_message.Message):
    __slots__ = ("key_id", "wallet_id", "description", "revoked", "create_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    wallet_id: str
    description: str
    revoked: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., description: _Optional[str] = ..., revoked: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAgentKeyRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    description: str
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CreateAgentKeyResponse(_message.Message):
    __slots__ = ("key_id", "api_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    api_key: str
    def __init__(self, key_id: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class ListAgentKeysRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAgentKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[AgentKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[AgentKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeAgentKeyRequest(_message.Message):
    __slots__ = ("request_id", "key_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    key_id: str
    def __init__(self, request_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class RevokeAgentKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: AgentKey
    def __init__(self, key: _Optional[_Union[AgentKey, _Mapping]] = ...) -> None: ...

class SubBudgetScope(_message.Message):
    __slots__ = ("models", "resource_classes", "worker_ids", "max_prices")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICES_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    resource_classes: _containers.RepeatedScalarFieldContainer[str]
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    max_prices: _resources_pb2.PriceSheet
    def __init__(self, models: _Optional[_Iterable[str]] = ..., resource_classes: _Optional[_Iterable[str]] = ..., worker_ids: _Optional[_Iterable[str]] = ..., max_prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ...) -> None: ...

class SubBudget(_message.Message):
    __slots__ = ("wallet_id", "parent_wallet_id", "root_wallet_id", "depth", "cap", "held", "spent", "available", "expire_time", "scope", "revoked", "stopped", "create_time")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    parent_wallet_id: str
    root_wallet_id: str
    depth: int
    cap: int
    held: int
    spent: int
    available: int
    expire_time: _timestamp_pb2.Timestamp
    scope: SubBudgetScope
    revoked: bool
    stopped: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, wallet_id: _Optional[str] = ..., parent_wallet_id: _Optional[str] = ..., root_wallet_id: _Optional[str] = ..., depth: _Optional[int] = ..., cap: _Optional[int] = ..., held: _Optional[int] = ..., spent: _Optional[int] = ..., available: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[SubBudgetScope, _Mapping]] = ..., revoked: _Optional[bool] = ..., stopped: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSubBudgetRequest(_message.Message):
    __slots__ = ("request_id", "parent_wallet_id", "display_name", "cap", "expire_time", "scope", "policy", "key_description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KEY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    parent_wallet_id: str
    display_name: str
    cap: int
    expire_time: _timestamp_pb2.Timestamp
    scope: SubBudgetScope
    policy: _policy_service_pb2.SpendPolicy
    key_description: str
    def __init__(self, request_id: _Optional[str] = ..., parent_wallet_id: _Optional[str] = ..., display_name: _Optional[str] = ..., cap: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., scope: _Optional[_Union[SubBudgetScope, _Mapping]] = ..., policy: _Optional[_Union[_policy_service_pb2.SpendPolicy, _Mapping]] = ..., key_description: _Optional[str] = ...) -> None: ...

class CreateSubBudgetResponse(_message.Message):
    __slots__ = ("wallet", "sub_budget", "key_id", "api_key")
    WALLET_FIELD_NUMBER: _ClassVar[int]
    SUB_BUDGET_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    wallet: _wallet_service_pb2.Wallet
    sub_budget: SubBudget
    key_id: str
    api_key: str
    def __init__(self, wallet: _Optional[_Union[_wallet_service_pb2.Wallet, _Mapping]] = ..., sub_budget: _Optional[_Union[SubBudget, _Mapping]] = ..., key_id: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class GetSubBudgetRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class GetSubBudgetResponse(_message.Message):
    __slots__ = ("sub_budget",)
    SUB_BUDGET_FIELD_NUMBER: _ClassVar[int]
    sub_budget: SubBudget
    def __init__(self, sub_budget: _Optional[_Union[SubBudget, _Mapping]] = ...) -> None: ...

class ListSubBudgetsRequest(_message.Message):
    __slots__ = ("parent_wallet_id", "page_size", "page_token")
    PARENT_WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent_wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, parent_wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSubBudgetsResponse(_message.Message):
    __slots__ = ("sub_budgets", "next_page_token")
    SUB_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sub_budgets: _containers.RepeatedCompositeFieldContainer[SubBudget]
    next_page_token: str
    def __init__(self, sub_budgets: _Optional[_Iterable[_Union[SubBudget, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeSubBudgetRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class RevokeSubBudgetResponse(_message.Message):
    __slots__ = ("sub_budget",)
    SUB_BUDGET_FIELD_NUMBER: _ClassVar[int]
    sub_budget: SubBudget
    def __init__(self, sub_budget: _Optional[_Union[SubBudget, _Mapping]] = ...) -> None: ...

class MandateKey(_message.Message):
    __slots__ = ("key_id", "public_key", "revoked", "create_time", "revoke_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    revoked: bool
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., revoked: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisterMandateKeyRequest(_message.Message):
    __slots__ = ("request_id", "public_key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    public_key: bytes
    def __init__(self, request_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class RegisterMandateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: MandateKey
    def __init__(self, key: _Optional[_Union[MandateKey, _Mapping]] = ...) -> None: ...

class ListMandateKeysRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMandateKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[MandateKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[MandateKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeMandateKeyRequest(_message.Message):
    __slots__ = ("request_id", "key_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    key_id: str
    def __init__(self, request_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class RevokeMandateKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: MandateKey
    def __init__(self, key: _Optional[_Union[MandateKey, _Mapping]] = ...) -> None: ...

class Mandate(_message.Message):
    __slots__ = ("mandate_hash", "key_id", "wallet_id", "agent_key_id", "max_per_job", "max_total", "used", "models", "expire_time", "token")
    MANDATE_HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_JOB_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    mandate_hash: str
    key_id: str
    wallet_id: str
    agent_key_id: str
    max_per_job: int
    max_total: int
    used: int
    models: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    token: str
    def __init__(self, mandate_hash: _Optional[str] = ..., key_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., agent_key_id: _Optional[str] = ..., max_per_job: _Optional[int] = ..., max_total: _Optional[int] = ..., used: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class GetMandateRequest(_message.Message):
    __slots__ = ("mandate_hash",)
    MANDATE_HASH_FIELD_NUMBER: _ClassVar[int]
    mandate_hash: str
    def __init__(self, mandate_hash: _Optional[str] = ...) -> None: ...

class GetMandateResponse(_message.Message):
    __slots__ = ("mandate",)
    MANDATE_FIELD_NUMBER: _ClassVar[int]
    mandate: Mandate
    def __init__(self, mandate: _Optional[_Union[Mandate, _Mapping]] = ...) -> None: ...
