"""The narrow storage interface the broker core runs on.

The core never sees LMDB (or, later, PostgreSQL): it reads and writes JSON-able
dicts in named tables through a `Tx`. One operation = one function `op(tx)`;
the store runs it atomically and durably, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from common.records import Record

T = TypeVar("T")

# Every table the broker uses. Keys are str; values are JSON-able dicts.
TABLES = (
    "meta",          # singletons: journal head, schema version, id clock (store-only)
    "accounts",      # ledger accounts
    "transfers",     # immutable ledger transfers
    "account_transfers",  # index: "<account_id>/<seq:020d>" -> {"transfer_id": ...}
    "account_entries",  # "<account_id>/<seq:020d>" -> balance deltas of a platform account,
                        # until the roll-up folds them into its row (core/ledger.py)
    "hold_expiry",   # index: "<expire_ms:020d>/<transfer_id>" -> {}
    "hold_states",   # "<pending transfer id>" -> how and when the hold resolved
    "journal",       # hash-chained journal: "<seq:020d>" -> entry (written by the sealer)
    "journal_unsealed",  # "<id:020d>" -> an entry as its op wrote it, until the sealer chains it
    "idempotency",   # "<scope>/<request_id>" -> stored first answer
    "idempotency_expiry",  # index: "<time_ms:020d>/<scope>/<request_id>" -> {}
    "owners",
    "providers",
    "wallets",
    "owner_wallets",  # index: "<owner_id>/<wallet_id>" -> {}
    "api_keys",      # "<key_id>" -> key record (hash of the secret, role, bindings)
    "api_key_hashes",  # "<sha256 hex of secret>" -> {"key_id": ...}
    "authorizations",
    "wallet_authorizations",  # index: "<wallet_id>/<seq:020d>" -> {"authorization_id": ...}
    "vouchers",      # "<voucher_id>" -> {"authorization_id", "redeemed_session_id", ...}
    "sessions",      # metering sessions
    "receipts",
    "workers",
    # Spend controls (broker/core/policy.py and its neighbours).
    "policies",      # "owner/<owner_id>" (tenant default) or "wallet/<wallet_id>" -> policy
    "spend_totals",  # "<wallet_id>/<period>/<bucket>" -> {"amount": ...}
    "refill_states",  # "<wallet_id>" -> refills today, failure streak, paused
    "approvals",     # "<authorization_id>" -> approval request
    "pending_approvals",  # index: "<owner_id>/<seq:020d>" -> {"authorization_id": ...}
    "approval_timers",  # index: "<ms:020d>/<authorization_id>/<expire|alert>" -> {}
    "baselines",     # "<wallet_id>" -> anomaly baselines
    "alerts",        # "<seq:020d>" -> alert
    "owner_alerts",  # index: "<owner_id>/<seq:020d>" -> {}
    "stop_deadlines",  # index: "<ms:020d>/<session_id>" -> {} (kill switch)
    "disputes",      # "<dispute_id>" -> dispute
    "receipt_disputes",  # "<receipt_id>" -> {"dispute_id": ...}
    "owner_disputes",  # index: "<owner_id>/<seq:020d>" -> {"dispute_id": ...}
    "refunds",       # "<refund_id>" -> signed refund receipt
    "receipt_refunds",  # index: "<receipt_id>/<refund_id>" -> {"amount": ...}
    "authorization_labels",  # "<authorization_id>" -> {"labels": {...}}, until sealed away
    "receipt_keys",  # "<owner_id>" -> the owner's X25519 receipt key
    "wallet_receipts",  # index: "<wallet_id>/<seq:020d>" -> {"receipt_id": ...}
    "owner_receipts",  # index: "<owner_id>/<period start ms:016d>/<receipt_id>" -> amounts
    "provider_receipts",  # index: "<provider_id>/<period start ms:016d>/<receipt_id>" -> amounts
    "owner_refunds",  # index: "<owner_id>/<period start ms:016d>/<refund_id>" -> amounts
    "provider_refunds",  # index: "<provider_id>/<period start ms:016d>/<refund_id>" -> amounts
    # Pricing (issue 6): quotes, job history, subscriptions and grants, leases.
    "quotes",
    "quote_expiry",  # index: "<expire_ms:020d>/<quote_id>" -> {}
    "job_history",   # "<worker_id>/<model>/<seq:020d>" -> one finished job's latency and usage
    "plans",
    "owner_plans",   # index: "<owner_id>/<seq:020d>" -> {"plan_id": ...}
    "subscriptions",
    "owner_subscriptions",  # index: "<owner_id>/<seq:020d>" -> {"subscription_id": ...}
    "wallet_plans",  # index: "<wallet_id>/<plan_id>" -> {"subscription_id": ...} (active)
    "subscription_due",  # index: "<next period start:020d>/<subscription_id>" -> {}
    "grants",
    "wallet_grants",  # index: "<wallet_id>/<seq:020d>" -> {"grant_id": ...}
    "grant_order",   # index: "<wallet_id>/<expire_ms:020d>/<priority rank>/<grant_id>" (active)
    "grant_expiry",  # index: "<expire_ms:020d>/<grant_id>" -> {} (active)
    "grant_holds",   # "<hold transfer id>" -> the grant credits that hold reserves
    "leases",
    "wallet_leases",  # index: "<wallet_id>/<seq:020d>" -> {"lease_id": ...}
    "worker_leases",  # "<worker_id>" -> {"lease_id": ...} while a lease is active
    "lease_expiry",  # index: "<end_ms:020d>/<lease_id>" -> {} (active)
    "lease_authorizations",  # index: "<lease_id>/<seq:020d>" -> {"authorization_id": ...}
    # Delegation (broker/core/agent_keys.py, delegation.py, budgets.py).
    "owner_agent_keys",  # index: "<owner_id>/<key_id>" -> {"key_id": ...}
    "sub_budgets",   # "<child wallet_id>" -> its level: parent, root, cap, held, spent, scope
    "wallet_children",  # index: "<parent wallet_id>/<child wallet_id>" -> {"wallet_id": ...}
    "voucher_families",  # "<original voucher id>" -> {"carved": {voucher id: amount}}
    "budget_holds",  # "<hold id>" -> {"wallet_id", "amount"} (pending holds of sub-budgets)
    "mandate_keys",  # "<owner_id>/<key_id>" -> an owner's Ed25519 mandate key (mandates.py)
    "mandates",      # "<mandate hash>" -> a mandate as first used, and what it has used
)


class Tx(Protocol):
    """A view of the store inside one atomic operation (or one read snapshot).

    Every store behaves alike: `table` must be one of TABLES (else ValueError);
    keys are str of 1..511 utf-8 bytes (else ValueError/TypeError); values are
    dicts that survive JSON (else TypeError/ValueError), and what is read back is
    the JSON round trip (tuples come back as lists). Keys sort by code point,
    which is utf-8 byte order.
    """

    def get(self, table: str, key: str) -> Record | None:
        """The record under `key`, or None. A fresh copy: mutating it changes
        nothing in the store."""

    def put(self, table: str, key: str, value: Record) -> None:
        """Insert or replace. `value` is copied (encoded) now, so a bad value
        fails here and later mutation of it changes nothing. Raises ReadOnlyError
        on a read-only Tx."""

    def delete(self, table: str, key: str) -> None:
        """Remove `key` if present. Raises ReadOnlyError on a read-only Tx."""

    def next_id(self) -> int:
        """A fresh id, unique in this store and greater than every id it gave before
        (microseconds since the epoch, bumped when needed): time-ordered keys without a
        counter that every operation would write. Raises ReadOnlyError on a read-only Tx."""

    def scan(
        self,
        table: str,
        prefix: str = "",
        *,
        start: str | None = None,
        stop: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[str, Record]]:
        """(key, record) pairs in key order (or reverse) whose key starts with
        `prefix`, restricted to start <= key < stop when given, at most `limit`.

        Lazy, but the result is the state when `scan` was called: the op may put
        and delete while iterating (e.g. delete each expired hold it visits).
        Consume it inside the op or read function: it ends with them."""


class Store(Protocol):
    """Durable, atomic execution of operations."""

    # True while writes fail for lack of room (StorageFull); reads still work.
    storage_full: bool

    async def submit(self, op: Callable[[Tx], T]) -> T:
        """Run `op` in the single writer, atomically. Returns after the change is
        durable (fsync). If `op` raises, none of its writes happen and the
        exception propagates to the caller; other operations are unaffected.
        Ops run one at a time in submission order. Cancelling the caller does not
        cancel an op already submitted: it may still commit. Raises StorageFull when
        the commit failed for lack of room (nothing written). `op` must not block (no
        waiting on locks, events or the network): LmdbStore may run it on the caller's
        event loop, inside the writer's transaction."""

    def submit_sync(self, op: Callable[[Tx], T]) -> T:
        """Blocking form of `submit`, for CLIs and start-up work."""

    def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` on a consistent read-only snapshot; never waits for the writer.
        Local and fast on LMDB and in memory, called inline on the event loop there; a
        store whose reads are network round trips (PgStore) also has `off_loop(call)`
        and `read_async(fn)`, which the API awaits instead (api/base.py `Services.read`)."""

    def close(self) -> None:
        """Drain pending operations, commit, and release the data directory."""


async def submit_single(store: Store, name: str, op: Callable[[Tx], T]) -> T | None:
    """Sweep work that one broker at a time does (`name`: "roll_up", "voucher_keys").
    On a store several brokers share (PgStore), under its single-runner lock: None,
    without running `op`, while another broker holds it. Elsewhere a plain `submit`:
    one broker, one writer."""
    single = getattr(store, "submit_single", None)
    return await (single(name, op) if single is not None else store.submit(op))


def due(tx: Tx, table: str, stop: str, limit: int) -> list[tuple[str, Record]]:
    """The first rows (in key order, keys below `stop`, at most `limit`) of an index of
    due work, for a sweep to resolve in this op. On a store several brokers share
    (PostgreSQL: `claim`) the rows are claimed: locked until the op ends, and those that
    another broker's sweep holds are skipped (FOR UPDATE SKIP LOCKED), so brokers that
    sweep at once resolve different rows instead of colliding on the same ones. Each
    resolution still checks its record's state: the store's isolation, not the claim,
    is what makes it happen once; a row skipped now is found by a later sweep."""
    claim = getattr(tx, "claim", None)
    if claim is not None:
        return claim(table, stop, limit)
    return list(tx.scan(table, stop=stop, limit=limit))


class StorageFull(RuntimeError):
    """A commit failed for lack of room (a full disk, or LMDB's map full): nothing of
    it was written, and writes keep failing until space is freed; reads still work."""


class MissingRecord(LookupError):
    """A record that the ledger's invariants say exists is not there (a bug, not a
    caller's mistake: it surfaces as INTERNAL)."""


def must_get(tx: Tx, table: str, key: str) -> Record:
    """The record under `key`, which must exist (a related record names it)."""
    found = tx.get(table, key)
    if found is None:
        raise MissingRecord(f"{table}/{key} is missing")
    return found
