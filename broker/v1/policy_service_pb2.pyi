import datetime

from broker.v1 import authorization_service_pb2 as _authorization_service_pb2
from broker.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_KIND_UNSPECIFIED: _ClassVar[AlertKind]
    ALERT_KIND_AUTHORIZATION_BURST: _ClassVar[AlertKind]
    ALERT_KIND_SPEND_BURST: _ClassVar[AlertKind]
    ALERT_KIND_NEW_MODEL: _ClassVar[AlertKind]
    ALERT_KIND_NEW_WORKER: _ClassVar[AlertKind]
    ALERT_KIND_DENIAL_RUN: _ClassVar[AlertKind]
    ALERT_KIND_APPROVAL_PENDING_TOO_LONG: _ClassVar[AlertKind]
    ALERT_KIND_REFILLS_PAUSED: _ClassVar[AlertKind]
    ALERT_KIND_AUDIT_FAILED: _ClassVar[AlertKind]

class PolicySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_SOURCE_UNSPECIFIED: _ClassVar[PolicySource]
    POLICY_SOURCE_NONE: _ClassVar[PolicySource]
    POLICY_SOURCE_TENANT: _ClassVar[PolicySource]
    POLICY_SOURCE_WALLET: _ClassVar[PolicySource]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_DENIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_EXPIRED: _ClassVar[ApprovalState]

class DisputeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPUTE_STATE_UNSPECIFIED: _ClassVar[DisputeState]
    DISPUTE_STATE_OPEN: _ClassVar[DisputeState]
    DISPUTE_STATE_REFUNDED: _ClassVar[DisputeState]
ALERT_KIND_UNSPECIFIED: AlertKind
ALERT_KIND_AUTHORIZATION_BURST: AlertKind
ALERT_KIND_SPEND_BURST: AlertKind
ALERT_KIND_NEW_MODEL: AlertKind
ALERT_KIND_NEW_WORKER: AlertKind
ALERT_KIND_DENIAL_RUN: AlertKind
ALERT_KIND_APPROVAL_PENDING_TOO_LONG: AlertKind
ALERT_KIND_REFILLS_PAUSED: AlertKind
ALERT_KIND_AUDIT_FAILED: AlertKind
POLICY_SOURCE_UNSPECIFIED: PolicySource
POLICY_SOURCE_NONE: PolicySource
POLICY_SOURCE_TENANT: PolicySource
POLICY_SOURCE_WALLET: PolicySource
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_DENIED: ApprovalState
APPROVAL_STATE_EXPIRED: ApprovalState
DISPUTE_STATE_UNSPECIFIED: DisputeState
DISPUTE_STATE_OPEN: DisputeState
DISPUTE_STATE_REFUNDED: DisputeState

class SpendLimits(_message.Message):
    __slots__ = ("daily", "weekly", "monthly", "all_time")
    DAILY_FIELD_NUMBER: _ClassVar[int]
    WEEKLY_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_FIELD_NUMBER: _ClassVar[int]
    ALL_TIME_FIELD_NUMBER: _ClassVar[int]
    daily: int
    weekly: int
    monthly: int
    all_time: int
    def __init__(self, daily: _Optional[int] = ..., weekly: _Optional[int] = ..., monthly: _Optional[int] = ..., all_time: _Optional[int] = ...) -> None: ...

class ScopeRules(_message.Message):
    __slots__ = ("allowed_models", "blocked_models", "allowed_resource_classes", "blocked_resource_classes", "allowed_workers", "blocked_workers")
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_RESOURCE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_RESOURCE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    blocked_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_resource_classes: _containers.RepeatedScalarFieldContainer[str]
    blocked_resource_classes: _containers.RepeatedScalarFieldContainer[str]
    allowed_workers: _containers.RepeatedScalarFieldContainer[str]
    blocked_workers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed_models: _Optional[_Iterable[str]] = ..., blocked_models: _Optional[_Iterable[str]] = ..., allowed_resource_classes: _Optional[_Iterable[str]] = ..., blocked_resource_classes: _Optional[_Iterable[str]] = ..., allowed_workers: _Optional[_Iterable[str]] = ..., blocked_workers: _Optional[_Iterable[str]] = ...) -> None: ...

class ApprovalRules(_message.Message):
    __slots__ = ("threshold", "timeout_seconds", "reserve_funds", "alert_after_seconds")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FUNDS_FIELD_NUMBER: _ClassVar[int]
    ALERT_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    timeout_seconds: int
    reserve_funds: bool
    alert_after_seconds: int
    def __init__(self, threshold: _Optional[int] = ..., timeout_seconds: _Optional[int] = ..., reserve_funds: _Optional[bool] = ..., alert_after_seconds: _Optional[int] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("requests_per_minute", "burst", "spend_per_minute")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    SPEND_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    burst: int
    spend_per_minute: int
    def __init__(self, requests_per_minute: _Optional[int] = ..., burst: _Optional[int] = ..., spend_per_minute: _Optional[int] = ...) -> None: ...

class RefillRules(_message.Message):
    __slots__ = ("daily_cap", "pause_after_failures")
    DAILY_CAP_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    daily_cap: int
    pause_after_failures: int
    def __init__(self, daily_cap: _Optional[int] = ..., pause_after_failures: _Optional[int] = ...) -> None: ...

class AlertRules(_message.Message):
    __slots__ = ("burst_factor", "min_authorizations_per_minute", "min_spend_per_hour", "denial_run", "warmup_authorizations", "freeze_on")
    BURST_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_AUTHORIZATIONS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    MIN_SPEND_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    DENIAL_RUN_FIELD_NUMBER: _ClassVar[int]
    WARMUP_AUTHORIZATIONS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_ON_FIELD_NUMBER: _ClassVar[int]
    burst_factor: int
    min_authorizations_per_minute: int
    min_spend_per_hour: int
    denial_run: int
    warmup_authorizations: int
    freeze_on: _containers.RepeatedScalarFieldContainer[AlertKind]
    def __init__(self, burst_factor: _Optional[int] = ..., min_authorizations_per_minute: _Optional[int] = ..., min_spend_per_hour: _Optional[int] = ..., denial_run: _Optional[int] = ..., warmup_authorizations: _Optional[int] = ..., freeze_on: _Optional[_Iterable[_Union[AlertKind, str]]] = ...) -> None: ...

class SpendPolicy(_message.Message):
    __slots__ = ("owner_id", "wallet_id", "max_per_authorization", "limits", "scope_rules", "max_prices", "approvals", "rate_limits", "refills", "alerts", "version", "update_time", "require_mandate")
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_RULES_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICES_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    REFILLS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_MANDATE_FIELD_NUMBER: _ClassVar[int]
    owner_id: str
    wallet_id: str
    max_per_authorization: int
    limits: SpendLimits
    scope_rules: ScopeRules
    max_prices: _resources_pb2.PriceSheet
    approvals: ApprovalRules
    rate_limits: RateLimits
    refills: RefillRules
    alerts: AlertRules
    version: int
    update_time: _timestamp_pb2.Timestamp
    require_mandate: bool
    def __init__(self, owner_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., max_per_authorization: _Optional[int] = ..., limits: _Optional[_Union[SpendLimits, _Mapping]] = ..., scope_rules: _Optional[_Union[ScopeRules, _Mapping]] = ..., max_prices: _Optional[_Union[_resources_pb2.PriceSheet, _Mapping]] = ..., approvals: _Optional[_Union[ApprovalRules, _Mapping]] = ..., rate_limits: _Optional[_Union[RateLimits, _Mapping]] = ..., refills: _Optional[_Union[RefillRules, _Mapping]] = ..., alerts: _Optional[_Union[AlertRules, _Mapping]] = ..., version: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., require_mandate: _Optional[bool] = ...) -> None: ...

class SetSpendPolicyRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id", "policy", "clear")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    policy: SpendPolicy
    clear: bool
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., policy: _Optional[_Union[SpendPolicy, _Mapping]] = ..., clear: _Optional[bool] = ...) -> None: ...

class SetSpendPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: SpendPolicy
    def __init__(self, policy: _Optional[_Union[SpendPolicy, _Mapping]] = ...) -> None: ...

class GetSpendPolicyRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class GetSpendPolicyResponse(_message.Message):
    __slots__ = ("policy", "source")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    policy: SpendPolicy
    source: PolicySource
    def __init__(self, policy: _Optional[_Union[SpendPolicy, _Mapping]] = ..., source: _Optional[_Union[PolicySource, str]] = ...) -> None: ...

class SpendStatus(_message.Message):
    __slots__ = ("wallet_id", "spent_today", "spent_this_week", "spent_this_month", "spent_all_time", "refilled_today", "consecutive_failed_jobs", "refills_paused", "blast_radius_today", "policy_source")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_TODAY_FIELD_NUMBER: _ClassVar[int]
    SPENT_THIS_WEEK_FIELD_NUMBER: _ClassVar[int]
    SPENT_THIS_MONTH_FIELD_NUMBER: _ClassVar[int]
    SPENT_ALL_TIME_FIELD_NUMBER: _ClassVar[int]
    REFILLED_TODAY_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILED_JOBS_FIELD_NUMBER: _ClassVar[int]
    REFILLS_PAUSED_FIELD_NUMBER: _ClassVar[int]
    BLAST_RADIUS_TODAY_FIELD_NUMBER: _ClassVar[int]
    POLICY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    spent_today: int
    spent_this_week: int
    spent_this_month: int
    spent_all_time: int
    refilled_today: int
    consecutive_failed_jobs: int
    refills_paused: bool
    blast_radius_today: int
    policy_source: PolicySource
    def __init__(self, wallet_id: _Optional[str] = ..., spent_today: _Optional[int] = ..., spent_this_week: _Optional[int] = ..., spent_this_month: _Optional[int] = ..., spent_all_time: _Optional[int] = ..., refilled_today: _Optional[int] = ..., consecutive_failed_jobs: _Optional[int] = ..., refills_paused: _Optional[bool] = ..., blast_radius_today: _Optional[int] = ..., policy_source: _Optional[_Union[PolicySource, str]] = ...) -> None: ...

class GetSpendStatusRequest(_message.Message):
    __slots__ = ("wallet_id",)
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    def __init__(self, wallet_id: _Optional[str] = ...) -> None: ...

class GetSpendStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SpendStatus
    def __init__(self, status: _Optional[_Union[SpendStatus, _Mapping]] = ...) -> None: ...

class ResumeRefillsRequest(_message.Message):
    __slots__ = ("request_id", "wallet_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    wallet_id: str
    def __init__(self, request_id: _Optional[str] = ..., wallet_id: _Optional[str] = ...) -> None: ...

class ResumeRefillsResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SpendStatus
    def __init__(self, status: _Optional[_Union[SpendStatus, _Mapping]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("authorization_id", "wallet_id", "amount", "scope", "state", "reason", "funds_reserved", "request_time", "deadline", "decide_time", "decided_by", "ttl_seconds")
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FUNDS_RESERVED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DECIDE_TIME_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    wallet_id: str
    amount: int
    scope: _resources_pb2.Scope
    state: ApprovalState
    reason: str
    funds_reserved: bool
    request_time: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    decide_time: _timestamp_pb2.Timestamp
    decided_by: str
    ttl_seconds: int
    def __init__(self, authorization_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., amount: _Optional[int] = ..., scope: _Optional[_Union[_resources_pb2.Scope, _Mapping]] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., reason: _Optional[str] = ..., funds_reserved: _Optional[bool] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decide_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token", "owner_id")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    owner_id: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner_id: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals", "next_page_token")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    next_page_token: str
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("authorization_id",)
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    def __init__(self, authorization_id: _Optional[str] = ...) -> None: ...

class GetApprovalResponse(_message.Message):
    __slots__ = ("approval", "authorization")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    authorization: _authorization_service_pb2.Authorization
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., authorization: _Optional[_Union[_authorization_service_pb2.Authorization, _Mapping]] = ...) -> None: ...

class ApproveAuthorizationRequest(_message.Message):
    __slots__ = ("request_id", "authorization_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    authorization_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., authorization_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ApproveAuthorizationResponse(_message.Message):
    __slots__ = ("approval", "authorization")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    authorization: _authorization_service_pb2.Authorization
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., authorization: _Optional[_Union[_authorization_service_pb2.Authorization, _Mapping]] = ...) -> None: ...

class DenyAuthorizationRequest(_message.Message):
    __slots__ = ("request_id", "authorization_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    authorization_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., authorization_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DenyAuthorizationResponse(_message.Message):
    __slots__ = ("approval", "authorization")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    authorization: _authorization_service_pb2.Authorization
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., authorization: _Optional[_Union[_authorization_service_pb2.Authorization, _Mapping]] = ...) -> None: ...

class WatchAuthorizationRequest(_message.Message):
    __slots__ = ("authorization_id",)
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    authorization_id: str
    def __init__(self, authorization_id: _Optional[str] = ...) -> None: ...

class WatchAuthorizationResponse(_message.Message):
    __slots__ = ("authorization", "approval")
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    authorization: _authorization_service_pb2.Authorization
    approval: Approval
    def __init__(self, authorization: _Optional[_Union[_authorization_service_pb2.Authorization, _Mapping]] = ..., approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "kind", "owner_id", "wallet_id", "message", "observed", "baseline", "subject", "wallet_frozen", "create_time")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    WALLET_FROZEN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    kind: AlertKind
    owner_id: str
    wallet_id: str
    message: str
    observed: int
    baseline: int
    subject: str
    wallet_frozen: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, alert_id: _Optional[str] = ..., kind: _Optional[_Union[AlertKind, str]] = ..., owner_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., message: _Optional[str] = ..., observed: _Optional[int] = ..., baseline: _Optional[int] = ..., subject: _Optional[str] = ..., wallet_frozen: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("wallet_id", "page_size", "page_token")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    page_size: int
    page_token: str
    def __init__(self, wallet_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("wallet_id", "after_alert_id")
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    wallet_id: str
    after_alert_id: str
    def __init__(self, wallet_id: _Optional[str] = ..., after_alert_id: _Optional[str] = ...) -> None: ...

class WatchAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuditResponse(_message.Message):
    __slots__ = ("ok", "problems", "journal_length", "audit_time")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_TIME_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    journal_length: int
    audit_time: _timestamp_pb2.Timestamp
    def __init__(self, ok: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., journal_length: _Optional[int] = ..., audit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("seq", "time", "kind", "data_json", "prev_hash", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    kind: str
    data_json: str
    prev_hash: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., data_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListJournalEntriesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJournalEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[JournalEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[JournalEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Dispute(_message.Message):
    __slots__ = ("dispute_id", "receipt_id", "authorization_id", "wallet_id", "owner_id", "reason", "state", "refunded", "create_time")
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    dispute_id: str
    receipt_id: str
    authorization_id: str
    wallet_id: str
    owner_id: str
    reason: str
    state: DisputeState
    refunded: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, dispute_id: _Optional[str] = ..., receipt_id: _Optional[str] = ..., authorization_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., reason: _Optional[str] = ..., state: _Optional[_Union[DisputeState, str]] = ..., refunded: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DisputeReceiptRequest(_message.Message):
    __slots__ = ("request_id", "receipt_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    receipt_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., receipt_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DisputeReceiptResponse(_message.Message):
    __slots__ = ("dispute",)
    DISPUTE_FIELD_NUMBER: _ClassVar[int]
    dispute: Dispute
    def __init__(self, dispute: _Optional[_Union[Dispute, _Mapping]] = ...) -> None: ...

class ListDisputesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDisputesResponse(_message.Message):
    __slots__ = ("disputes", "next_page_token")
    DISPUTES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    disputes: _containers.RepeatedCompositeFieldContainer[Dispute]
    next_page_token: str
    def __init__(self, disputes: _Optional[_Iterable[_Union[Dispute, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("refund_id", "receipt_id", "authorization_id", "session_id", "wallet_id", "amount", "provider_refund", "fee_refund", "credited_account_id", "reason", "dispute_id", "worker_usage_payload", "worker_usage_signature", "refund_time", "key_id", "signature", "signed_payload", "worker_usage_batch")
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REFUND_FIELD_NUMBER: _ClassVar[int]
    FEE_REFUND_FIELD_NUMBER: _ClassVar[int]
    CREDITED_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    REFUND_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WORKER_USAGE_BATCH_FIELD_NUMBER: _ClassVar[int]
    refund_id: str
    receipt_id: str
    authorization_id: str
    session_id: str
    wallet_id: str
    amount: int
    provider_refund: int
    fee_refund: int
    credited_account_id: str
    reason: str
    dispute_id: str
    worker_usage_payload: bytes
    worker_usage_signature: bytes
    refund_time: _timestamp_pb2.Timestamp
    key_id: str
    signature: bytes
    signed_payload: bytes
    worker_usage_batch: bytes
    def __init__(self, refund_id: _Optional[str] = ..., receipt_id: _Optional[str] = ..., authorization_id: _Optional[str] = ..., session_id: _Optional[str] = ..., wallet_id: _Optional[str] = ..., amount: _Optional[int] = ..., provider_refund: _Optional[int] = ..., fee_refund: _Optional[int] = ..., credited_account_id: _Optional[str] = ..., reason: _Optional[str] = ..., dispute_id: _Optional[str] = ..., worker_usage_payload: _Optional[bytes] = ..., worker_usage_signature: _Optional[bytes] = ..., refund_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., signed_payload: _Optional[bytes] = ..., worker_usage_batch: _Optional[bytes] = ...) -> None: ...

class RefundReceiptRequest(_message.Message):
    __slots__ = ("request_id", "receipt_id", "amount", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    receipt_id: str
    amount: int
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., receipt_id: _Optional[str] = ..., amount: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RefundReceiptResponse(_message.Message):
    __slots__ = ("refund",)
    REFUND_FIELD_NUMBER: _ClassVar[int]
    refund: Refund
    def __init__(self, refund: _Optional[_Union[Refund, _Mapping]] = ...) -> None: ...
