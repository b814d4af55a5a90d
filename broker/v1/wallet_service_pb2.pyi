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

class TransferKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_KIND_UNSPECIFIED: _ClassVar[TransferKind]
    TRANSFER_KIND_POSTED: _ClassVar[TransferKind]
    TRANSFER_KIND_PENDING: _ClassVar[TransferKind]
    TRANSFER_KIND_POST_PENDING: _ClassVar[TransferKind]
    TRANSFER_KIND_VOID_PENDING: _ClassVar[TransferKind]
    TRANSFER_KIND_EXPIRE_PENDING: _ClassVar[TransferKind]
TRANSFER_KIND_UNSPECIFIED: TransferKind
TRANSFER_KIND_POSTED: TransferKind
TRANSFER_KIND_PENDING: TransferKind
TRANSFER_KIND_POST_PENDING: TransferKind
TRANSFER_KIND_VOID_PENDING: TransferKind
TRANSFER_KIND_EXPIRE_PENDING: TransferKind

class Wallet(_message.Message):
    __slots__ = ("wallet_id", "owner_id", "display_name", "cap", "refill_target", "frozen", "balance", "create_time")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    REFILL_TARGET_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    owner_id: str
    display_name: str
    cap: int
    refill_target: int
    frozen: bool
    balance: _resources_pb2.Balance
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, wallet_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., display_name: _Optional[str] = ..., cap: _Optional[int] = ..., refill_target: _Optional[int] = ..., frozen: _Optional[bool] = ..., balance: _Optional[_Union[_resources_pb2.Balance, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateWalletRequest(_message.Message):
    __slots__ = ("request_id", "display_name", "cap", "refill_target")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    REFILL_TARGET_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    display_name: str
    cap: int
    refill_target: int
    def __init__(self, request_id: _Optional[str] = ..., display_name: _Optional[str] = ..., cap: _Optional[int] = ..., refill_target: _Optional[int] = ...) -> None: ...

class CreateWalletResponse(_message.Message):
    __slots__ = ("wallet",)
    WALLET_FIELD_NUMBER: _ClassVar[int]
    wallet: Wallet
    def __init__(self, wallet: _Optional[_Union[Wallet, _Mapping]] = ...) -> None: ...

class GetWalletRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class GetWalletResponse(_message.Message):
    __slots__ = ("wallet",)
    WALLET_FIELD_NUMBER: _ClassVar[int]
    wallet: Wallet
    def __init__(self, wallet: _Optional[_Union[Wallet, _Mapping]] = ...) -> None: ...

class ListWalletsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "owner_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    owner_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner_id: _Optional[str] = ...) -> None: ...

class ListWalletsResponse(_message.Message):
    __slots__ = ("wallets", "next_page_token")
    WALLETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallets: _containers.RepeatedCompositeFieldContainer[Wallet]
    next_page_token: str
    def __init__(self, wallets: _Optional[_Iterable[_Union[Wallet, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FundWalletRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id", "amount")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    amount: int
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class FundWalletResponse(_message.Message):
    __slots__ = ("transfer_id", "wallet_balance", "treasury_balance")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_BALANCE_FIELD_NUMBER: _ClassVar[int]
    TREASURY_BALANCE_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    wallet_balance: _resources_pb2.Balance
    treasury_balance: _resources_pb2.Balance
    def __init__(self, transfer_id: _Optional[str] = ..., wallet_balance: _Optional[_Union[_resources_pb2.Balance, _Mapping]] = ..., treasury_balance: _Optional[_Union[_resources_pb2.Balance, _Mapping]] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("account_id", "balance")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    balance: _resources_pb2.Balance
    def __init__(self, account_id: _Optional[str] = ..., balance: _Optional[_Union[_resources_pb2.Balance, _Mapping]] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("transfer_id", "debit_account_id", "credit_account_id", "amount", "kind", "pending_id", "code", "create_time", "released")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    kind: TransferKind
    pending_id: str
    code: str
    create_time: _timestamp_pb2.Timestamp
    released: int
    def __init__(self, transfer_id: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[int] = ..., kind: _Optional[_Union[TransferKind, str]] = ..., pending_id: _Optional[str] = ..., code: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., released: _Optional[int] = ...) -> None: ...

class ListTransfersRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransfersResponse(_message.Message):
    __slots__ = ("transfers", "next_page_token")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    next_page_token: str
    def __init__(self, transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FreezeWalletRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class FreezeWalletResponse(_message.Message):
    __slots__ = ("wallet",)
    WALLET_FIELD_NUMBER: _ClassVar[int]
    wallet: Wallet
    def __init__(self, wallet: _Optional[_Union[Wallet, _Mapping]] = ...) -> None: ...

class UnfreezeWalletRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class UnfreezeWalletResponse(_message.Message):
    __slots__ = ("wallet",)
    WALLET_FIELD_NUMBER: _ClassVar[int]
    wallet: Wallet
    def __init__(self, wallet: _Optional[_Union[Wallet, _Mapping]] = ...) -> None: ...
