"""The declared type of every table's records, and the schema version they belong to.

The core reads and writes plain dicts (`Tx.get` and `Tx.put`); every store checks each
value against its table's type here when it is written (`check`), so a record with a
missing field, a field of the wrong type (an amount that is a float, a flag that is a
string) or a field nobody declared never reaches the disk. Types are msgspec Structs:
checking one costs well under a microsecond. Fields with a default may be absent.

SCHEMA_VERSION says which set of types and key layouts a data directory holds; it is
stored in `meta/schema_version` (broker/store/schema.py migrates older ones). Changing
a type in a way that old records do not satisfy needs a new version and a migration.
"""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 2  # 2: refunds indexed for statements (owner_refunds, provider_refunds)

Prices = dict[str, int]
Json = dict[str, Any]


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Empty(_Record):
    """Index rows whose key says everything."""


class Account(_Record):
    account_id: str
    kind: str
    owner_id: str
    no_overdraft: bool
    max_balance: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    create_ms: int
    grant_credits: int = 0
    grant_reserved: int = 0


class AccountEntry(_Record):
    """Balance deltas of a platform account from one transfer, until rolled up."""
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


class Transfer(_Record):
    transfer_id: str
    kind: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    code: str
    create_ms: int
    pending_id: str
    timeout_ms: int
    user_data: dict[str, str]
    seq: int
    released: int = 0


class TransferRef(_Record):
    transfer_id: str


class HoldState(_Record):
    state: str
    resolved_by: str = ""
    posted: int = 0
    released: int = 0
    resolve_ms: int = 0


class JournalEntry(_Record):
    seq: int
    time_ms: int
    kind: str
    data: Json
    prev: str
    hash: str
    digest: str = ""  # absent on entries sealed before digests (the old hash rule)


class UnsealedEntry(_Record):
    time_ms: int
    kind: str
    data: Json
    digest: str


class Idempotency(_Record):
    fingerprint: str
    result: Json
    time_ms: int


class Owner(_Record):
    owner_id: str
    display_name: str
    treasury_account_id: str
    create_ms: int


class Provider(_Record):
    provider_id: str
    display_name: str
    payout_account_id: str
    create_ms: int


class Wallet(_Record):
    wallet_id: str
    owner_id: str
    display_name: str
    cap: int
    refill_target: int
    frozen: bool
    create_ms: int


class ApiKey(_Record):
    key_id: str
    role: str
    owner_id: str
    wallet_id: str
    provider_id: str
    description: str
    secret_sha256: str
    revoked: bool
    create_ms: int


class KeyRef(_Record):
    key_id: str


class Authorization(_Record):
    authorization_id: str
    wallet_id: str
    owner_id: str
    amount: int
    scope: Json
    state: str
    hold_id: str
    voucher_id: str
    voucher_key_id: str
    expire_ms: int
    create_ms: int
    charged: int
    receipt_id: str
    session_id: str
    seq: int
    key_id: str
    lease_id: str = ""
    binding: Json = {}
    # A voucher narrowed offline and redeemed: the authorization it was split from.
    derived_from: str = ""
    holder_key: str = ""  # the key a holder narrows the voucher with (base64url; may be empty)
    mandate_hash: str = ""  # the owner's mandate it was made under (mandates.py)


class AuthorizationRef(_Record):
    authorization_id: str


class Voucher(_Record):
    voucher_id: str
    authorization_id: str
    session_id: str
    redeem_ms: int


class Signed(_Record):
    payload: str
    signature: str
    batch: str = ""  # signed MeterWorker batch bytes (base64) when signature is over them


class Session(_Record):
    session_id: str
    authorization_id: str
    voucher_id: str
    worker_id: str
    provider_id: str
    budget: int
    prices: Prices
    last_seq: int
    charged: int
    stop_reason: str
    state: str
    open_ms: int
    last_report_ms: int
    expire_ms: int
    report_interval_ms: int
    receipt_id: str
    usage_public_key: str
    lease_id: str
    resource_class: str
    # Absent once they live only in a sealed receipt (receipts.SEALED_SESSION_FIELDS).
    usage: dict[str, int] = {}
    signed_usage: Signed | None = None
    model: str = ""
    # The fencing token: bumped each time a stream attaches (opens or resumes); a
    # stream's writes carry the one it attached with (core/metering.py `attach`).
    epoch: int = 0
    # Once settled: how and when, and whether by its worker's finish on that finish's
    # usage, so that the settlement can be answered again (core/settled.py). The
    # journal's session_settled entry holds the same outcome and time.
    outcome: str = ""
    settle_ms: int = 0
    settled_by_finish: bool = False


class Receipt(_Record):
    receipt_id: str
    held: int
    charged: int
    released: int
    worker_payout: int
    platform_fee: int
    period_start_ms: int
    period_end_ms: int
    authorization_id: str
    owner_id: str
    wallet_id: str
    provider_id: str
    payment_model: str
    key_id: str
    signed_payload: str
    signature: str
    sealed: str
    receipt_key_id: str
    # The itemised part, present only when there was no owner key to seal it to.
    session_id: str = ""
    worker_id: str = ""
    model: str = ""
    resource_class: str = ""
    usage: dict[str, int] = {}
    prices: Prices = {}
    outcome: str = ""
    labels: dict[str, str] = {}
    authorize_ms: int = 0
    open_ms: int = 0
    settle_ms: int = 0
    # The worker's signed final usage: beside the seal too, so the agent can check its
    # charge (receipts.CHARGE_CHECK_FIELDS).
    worker_usage: Signed | None = None
    mandate_hash: str = ""  # beside the seal too: the audit reads it


class Worker(_Record):
    worker_id: str
    provider_id: str
    endpoint: str
    capabilities: Json
    prices: Prices
    active: bool
    usage_public_key: str
    create_ms: int
    update_ms: int


class Policy(_Record):
    max_per_authorization: int
    limits: dict[str, int]
    scope_rules: dict[str, list[str]]
    max_prices: Prices
    approvals: Json
    rate_limits: dict[str, int]
    refills: dict[str, int]
    alerts: Json
    owner_id: str
    wallet_id: str
    version: int
    update_ms: int
    require_mandate: bool = False


class Amount(_Record):
    amount: int


class RefillState(_Record):
    day: str
    refilled: int
    failures: int
    paused: bool


class Approval(_Record):
    authorization_id: str
    wallet_id: str
    owner_id: str
    amount: int
    scope: Json
    ttl_ms: int
    state: str
    reason: str
    reserved: bool
    request_ms: int
    deadline_ms: int
    alert_ms: int
    decide_ms: int
    decided_by: str
    seq: int


class Baseline(_Record):
    authorizations: int
    models: list[str]
    workers: list[str]
    denials: int
    minute: int
    minute_count: int
    auth_rate_milli: int
    alerted_minute: int
    hour: int
    hour_spend: int
    spend_rate: int
    alerted_hour: int


class Alert(_Record):
    alert_id: str
    seq: int
    kind: str
    owner_id: str
    wallet_id: str
    message: str
    observed: int
    baseline: int
    subject: str
    wallet_frozen: bool
    create_ms: int


class Dispute(_Record):
    dispute_id: str
    receipt_id: str
    authorization_id: str
    wallet_id: str
    owner_id: str
    reason: str
    state: str
    refunded: int
    create_ms: int


class DisputeRef(_Record):
    dispute_id: str


class Refund(_Record):
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
    worker_usage: Signed
    refund_ms: int
    key_id: str
    signed_payload: str
    signature: str
    transfer_ids: list[str]


class Labels(_Record):
    """In clear when the owner had no receipt key at Authorize; else sealed to it."""
    labels: dict[str, str] = {}
    sealed: str = ""  # base64 sealed box of {"labels": ...}
    receipt_key_id: str = ""


class ReceiptKey(_Record):
    owner_id: str
    key_id: str
    public_key: str
    create_ms: int


class ReceiptRef(_Record):
    receipt_id: str


class OwnerReceipt(_Record):
    wallet_id: str
    payment_model: str
    charged: int
    released: int


class ProviderReceipt(_Record):
    charged: int
    payout: int
    fee: int


class OwnerRefund(_Record):
    """A refund as an owner's statement counts it: the charged wallet and model."""
    wallet_id: str
    payment_model: str
    amount: int


class ProviderRefund(_Record):
    """A refund as a payout statement counts it: taken back from payout and fee."""
    amount: int
    payout: int
    fee: int


class Quote(_Record):
    quote_id: str
    owner_id: str
    wallet_id: str
    job: Json
    offers: list[Json]
    create_ms: int
    expire_ms: int


class JobHistory(_Record):
    duration_ms: int
    gpu_ms: int
    input_tokens: int
    output_tokens: int
    settle_ms: int = 0


class Plan(_Record):
    plan_id: str
    owner_id: str
    display_name: str
    credits_per_period: int
    period_ms: int
    rollover_periods: int
    priority: int
    create_ms: int


class PlanRef(_Record):
    plan_id: str


class Subscription(_Record):
    subscription_id: str
    plan_id: str
    wallet_id: str
    owner_id: str
    state: str
    start_ms: int
    next_period: int
    next_ms: int
    create_ms: int


class SubscriptionRef(_Record):
    subscription_id: str


class Grant(_Record):
    grant_id: str
    subscription_id: str
    plan_id: str
    wallet_id: str
    issuer_account_id: str
    period: int
    requested: int
    amount: int
    remaining: int
    reserved: int
    spent: int
    returned: int
    priority: int
    start_ms: int
    expire_ms: int
    state: str
    create_ms: int


class GrantRef(_Record):
    grant_id: str


class GrantHold(_Record):
    account_id: str
    parts: list[tuple[str, int]]  # (grant id, credits reserved), in burn order


class Lease(_Record):
    lease_id: str
    wallet_id: str
    owner_id: str
    worker_id: str
    provider_id: str
    endpoint: str
    state: str
    start_ms: int
    end_ms: int
    reserved_ms: int
    reserved_hour_price: int
    unused_reserved_bps: int
    quote_id: str
    hold_id: str
    held: int
    used_ms: int
    jobs_gpu_ms: int
    charged: int
    worker_payout: int
    platform_fee: int
    released: int
    settle_ms: int
    statement: dict[str, str]
    create_ms: int


class LeaseRef(_Record):
    lease_id: str


# meta holds a few singletons of different shapes: the journal head {seq, hash}, the
# schema version {version}, the LMDB writer's id clock {last}. (The store's own tests
# use it for records of any shape.)
Meta = dict[str, Any]

class SubBudget(_Record):
    """One level of a tree of wallets (broker/core/delegation.py)."""
    wallet_id: str
    parent_wallet_id: str
    root_wallet_id: str
    owner_id: str
    depth: int
    cap: int
    held: int
    spent: int
    expire_ms: int
    scope: Json
    revoked: bool
    create_ms: int
    created_by: str


class WalletRef(_Record):
    wallet_id: str


class VoucherFamily(_Record):
    """What was split off each voucher of a family of narrowed vouchers."""
    carved: dict[str, int]


class BudgetHold(_Record):
    wallet_id: str
    amount: int


class MandateKey(_Record):
    """An owner's Ed25519 key for signing mandates (broker/core/mandates.py)."""
    key_id: str
    owner_id: str
    public_key: str  # base64 of the raw 32 bytes
    revoked: bool
    create_ms: int
    revoke_ms: int


class Mandate(_Record):
    """A mandate as first used, with what its authorizations hold and were charged."""
    mandate_hash: str
    owner_id: str
    key_id: str
    token: str
    wallet_id: str
    agent_key_id: str
    per_job: int
    total: int
    models: list[str]
    expire_ms: int
    used: int
    create_ms: int


TYPES: dict[str, Any] = {
    "meta": Meta,
    "accounts": Account,
    "transfers": Transfer,
    "account_transfers": TransferRef,
    "account_entries": AccountEntry,
    "hold_expiry": Empty,
    "hold_states": HoldState,
    "journal": JournalEntry,
    "journal_unsealed": UnsealedEntry,
    "idempotency": Idempotency,
    "idempotency_expiry": Empty,
    "owners": Owner,
    "providers": Provider,
    "wallets": Wallet,
    "owner_wallets": Empty,
    "api_keys": ApiKey,
    "api_key_hashes": KeyRef,
    "authorizations": Authorization,
    "wallet_authorizations": AuthorizationRef,
    "vouchers": Voucher,
    "sessions": Session,
    "receipts": Receipt,
    "workers": Worker,
    "policies": Policy,
    "spend_totals": Amount,
    "refill_states": RefillState,
    "approvals": Approval,
    "pending_approvals": AuthorizationRef,
    "approval_timers": Empty,
    "baselines": Baseline,
    "alerts": Alert,
    "owner_alerts": Empty,
    "stop_deadlines": Empty,
    "disputes": Dispute,
    "receipt_disputes": DisputeRef,
    "owner_disputes": DisputeRef,
    "refunds": Refund,
    "receipt_refunds": Amount,
    "authorization_labels": Labels,
    "receipt_keys": ReceiptKey,
    "wallet_receipts": ReceiptRef,
    "owner_receipts": OwnerReceipt,
    "provider_receipts": ProviderReceipt,
    "owner_refunds": OwnerRefund,
    "provider_refunds": ProviderRefund,
    "quotes": Quote,
    "quote_expiry": Empty,
    "job_history": JobHistory,
    "plans": Plan,
    "owner_plans": PlanRef,
    "subscriptions": Subscription,
    "owner_subscriptions": SubscriptionRef,
    "wallet_plans": SubscriptionRef,
    "subscription_due": Empty,
    "grants": Grant,
    "wallet_grants": GrantRef,
    "grant_order": Empty,
    "grant_expiry": Empty,
    "grant_holds": GrantHold,
    "leases": Lease,
    "wallet_leases": LeaseRef,
    "worker_leases": LeaseRef,
    "lease_expiry": Empty,
    "lease_authorizations": AuthorizationRef,
    "owner_agent_keys": KeyRef,
    "sub_budgets": SubBudget,
    "wallet_children": WalletRef,
    "voucher_families": VoucherFamily,
    "budget_holds": BudgetHold,
    "mandate_keys": MandateKey,
    "mandates": Mandate,
}


class RecordTypeError(TypeError):
    """A value that is not a record of its table's type (names the table and the field)."""


def check(table: str, value: dict[str, Any]) -> None:
    """Raise RecordTypeError unless `value` is a record of `table`'s declared type."""
    try:
        msgspec.convert(value, TYPES[table])
    except msgspec.ValidationError as error:
        raise RecordTypeError(f"not a {table} record: {error}") from None
