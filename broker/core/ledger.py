"""Double-entry ledger with two-phase transfers, after TigerBeetle.

Accounts keep debits_pending, debits_posted, credits_pending, credits_posted.
Transfers are immutable records. A pending transfer (a hold) reserves funds and
resolves exactly once: post (any amount up to the hold; the rest is released in
the same step), void, or expire. The resolution is recorded in `hold_states`.

All functions take a `Tx` and raise BrokerError before writing anything, so a
rejected transfer changes nothing even outside a BufferedTx.

Platform accounts (funding, escrow, fees) are append-only for operations: see
`_apply` and `roll_up`. Transfer seqs are time-ordered unique ids, not a counter.
"""

from __future__ import annotations

import secrets
from typing import Any

from common.errors import BrokerError, Code, precondition
from common.money import MAX_AMOUNT

from ..store.base import Record, Tx, due, must_get
from . import budgets, grants

# Platform-wide accounts, created once by `ensure_platform_accounts`.
FUNDING_ACCOUNT = "platform:funding"  # the outside world: money in (may go negative)
ESCROW_ACCOUNT = "platform:escrow"  # receives holds; passes settled money on
FEE_ACCOUNT = "platform:fees"  # platform fees
# Every owner's money passes through the platform accounts, so no operation on a wallet
# reads or rewrites their rows: a change is an entry in `account_entries` under the
# transfer's seq, and `roll_up` folds the entries into the rows in the background.
PLATFORM_PREFIX = "platform:"

POSTED, PENDING = "posted", "pending"
POST_PENDING, VOID_PENDING, EXPIRE_PENDING = "post_pending", "void_pending", "expire_pending"
RESOLUTION_STATE = {POST_PENDING: "posted", VOID_PENDING: "voided", EXPIRE_PENDING: "expired"}
# The code a resolution's row shows in ListTransfers (its `released` says what went back).
RESOLUTION_CODE = {POST_PENDING: "settlement", VOID_PENDING: "release",
                   EXPIRE_PENDING: "release"}


def new_account(account_id: str, kind: str, now: int, *, no_overdraft: bool,
                owner_id: str = "", max_balance: int = 0) -> Record:
    return {
        "account_id": account_id, "kind": kind, "owner_id": owner_id,
        # Debits may never exceed posted credits (checked when a hold or transfer is created).
        "no_overdraft": no_overdraft,
        # Most the posted balance may reach through credits; 0 = unlimited.
        "max_balance": max_balance,
        "debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 0,
        "create_ms": now,
    }


def create_account(tx: Tx, account: Record) -> Record:
    if tx.get("accounts", account["account_id"]) is not None:
        raise BrokerError(Code.ALREADY_EXISTS, "ACCOUNT_EXISTS",
                          f"account {account['account_id']!r} already exists")
    tx.put("accounts", account["account_id"], account)
    return account


def ensure_platform_accounts(tx: Tx, now: int) -> None:
    for account_id, kind in ((FUNDING_ACCOUNT, "funding"), (ESCROW_ACCOUNT, "escrow"),
                             (FEE_ACCOUNT, "fees")):
        if tx.get("accounts", account_id) is None:
            tx.put("accounts", account_id, new_account(account_id, kind, now, no_overdraft=False))


def is_platform(account_id: str) -> bool:
    return account_id.startswith(PLATFORM_PREFIX)


def get_account(tx: Tx, account_id: str) -> Record:
    """The account with its balances now. For a platform account that is its row plus
    the entries not yet rolled up: a read of every recent entry, so operations on
    wallets never call this for one (reads, audits and the admin's credits do)."""
    account = tx.get("accounts", account_id)
    if account is None:
        raise BrokerError(Code.NOT_FOUND, "ACCOUNT_NOT_FOUND",
                          f"account {account_id!r} not found", {"account": account_id})
    if is_platform(account_id):
        for _, entry in tx.scan("account_entries", prefix=f"{account_id}/"):
            for name, delta in entry.items():
                account[name] += delta
    return account


ROLL_UP_BATCH = 10_000


def roll_up(tx: Tx, limit: int = ROLL_UP_BATCH) -> int:
    """Fold up to `limit` platform-account entries into their accounts' rows and drop
    them; how many were folded (0: nothing to do). Run by the broker's sweep: the one
    operation that rewrites a platform account's row."""
    sums: dict[str, dict[str, int]] = {}
    folded = 0
    for key, entry in tx.scan("account_entries", limit=limit):
        account_sums = sums.setdefault(key.rsplit("/", 1)[0], {})
        for name, delta in entry.items():
            account_sums[name] = account_sums.get(name, 0) + delta
        tx.delete("account_entries", key)
        folded += 1
    for account_id, deltas in sums.items():
        account = tx.get("accounts", account_id)
        assert account is not None, f"entries of a missing account {account_id}"
        for name, delta in deltas.items():
            account[name] += delta
        tx.put("accounts", account_id, account)
    return folded


def balance(account: Record) -> dict[str, int]:
    posted = account["credits_posted"] - account["debits_posted"]
    pending = account["debits_pending"]
    out = {"posted": posted, "pending": pending, "available": posted - pending}
    if grants.has_credits(account):  # of posted, the subscription credits (grants.py)
        out["credits"] = account["grant_credits"]
    return out


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or amount <= 0 or amount > MAX_AMOUNT:
        raise BrokerError(Code.INVALID_ARGUMENT, "INVALID_AMOUNT",
                          f"transfer amount must be between 1 and {MAX_AMOUNT}")


def _check_debit(debit: Record, amount: int) -> None:
    if debit["no_overdraft"]:
        spent = debit["debits_pending"] + debit["debits_posted"] + amount
        if spent > debit["credits_posted"]:
            available = balance(debit)["available"]
            raise BrokerError(
                Code.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS",
                f"account {debit['account_id']} has {available} available, {amount} needed",
                {"account": debit["account_id"], "available": str(available),
                 "requested": str(amount)},
                quota_violations=[(f"account:{debit['account_id']}",
                                   f"{amount} requested, {available} available")])


def _check_credit(credit: Record, amount: int) -> None:
    if credit["max_balance"]:
        after = balance(credit)["posted"] + amount
        if after > credit["max_balance"]:
            raise BrokerError(
                Code.FAILED_PRECONDITION, "WALLET_CAP_EXCEEDED",
                f"account {credit['account_id']} would hold {after}, "
                f"above its cap of {credit['max_balance']}",
                {"account": credit["account_id"], "cap": str(credit["max_balance"])})


def next_seq(tx: Tx, name: str) -> int:
    """A time-ordered unique number for index keys and record seqs (`name` says what it
    numbers). Not a counter: a counter is a key every operation would write, so
    operations of unrelated owners would queue behind each other on it (Tx.next_id)."""
    return tx.next_id()


def _record(tx: Tx, transfer: Record, seq: int) -> Record:
    transfer["seq"] = seq
    tx.put("transfers", transfer["transfer_id"], transfer)
    for account_id in {transfer["debit_account_id"], transfer["credit_account_id"]}:
        tx.put("account_transfers", f"{account_id}/{seq:020d}",
               {"transfer_id": transfer["transfer_id"]})
    return transfer


def _new_transfer(kind: str, debit_id: str, credit_id: str, amount: int, code: str,
                  now: int, **extra: Any) -> Record:
    return {"transfer_id": "tr_" + secrets.token_hex(12), "kind": kind,
            "debit_account_id": debit_id, "credit_account_id": credit_id,
            "amount": amount, "code": code, "create_ms": now, "pending_id": "",
            "timeout_ms": 0, "user_data": {}, **extra}


def _side(tx: Tx, account_id: str) -> Record | None:
    """The account an operation reads and rewrites; None for a platform account, which
    has no limits to check and is only appended to (see `_apply`)."""
    return None if is_platform(account_id) else get_account(tx, account_id)


def _apply(tx: Tx, account_id: str, account: Record | None, seq: int, **deltas: int) -> None:
    """Change an account's balances: in its row, or for a platform account (None) as
    an append-only entry keyed by the transfer's seq, folded in later by `roll_up`."""
    if account is None:
        tx.put("account_entries", f"{account_id}/{seq:020d}",
               {name: delta for name, delta in deltas.items() if delta})
        return
    for name, delta in deltas.items():
        account[name] += delta
    tx.put("accounts", account_id, account)


def transfer(tx: Tx, debit_id: str, credit_id: str, amount: int, code: str, now: int,
             user_data: dict[str, str] | None = None) -> Record:
    """A posted transfer: funds move at once."""
    _check_amount(amount)
    debit, credit = _side(tx, debit_id), _side(tx, credit_id)
    if debit is not None:
        _check_debit(debit, amount)
    if credit is not None:
        _check_credit(credit, amount)
    seq = next_seq(tx, "transfer_seq")
    _apply(tx, debit_id, debit, seq, debits_posted=amount)
    _apply(tx, credit_id, credit, seq, credits_posted=amount)
    return _record(tx, _new_transfer(POSTED, debit_id, credit_id, amount, code, now,
                                     user_data=user_data or {}), seq)


def hold(tx: Tx, debit_id: str, credit_id: str, amount: int, code: str, now: int,
         timeout_ms: int, user_data: dict[str, str] | None = None) -> Record:
    """A pending transfer reserving `amount` until `timeout_ms` (absolute, ms)."""
    _check_amount(amount)
    debit, credit = get_account(tx, debit_id), _side(tx, credit_id)
    _check_debit(debit, amount)
    seq = next_seq(tx, "transfer_seq")
    _apply(tx, debit_id, debit, seq, debits_pending=amount)
    _apply(tx, credit_id, credit, seq, credits_pending=amount)
    pending = _record(tx, _new_transfer(PENDING, debit_id, credit_id, amount, code, now,
                                        timeout_ms=timeout_ms, user_data=user_data or {}),
                      seq)
    if grants.has_credits(debit):  # subscription credits are spent first (grants.py)
        grants.on_hold(tx, debit, pending["transfer_id"], amount)
    tx.put("hold_states", pending["transfer_id"], {"state": "pending"})
    tx.put("hold_expiry", f"{timeout_ms:020d}/{pending['transfer_id']}", {})
    return pending


def get_hold(tx: Tx, pending_id: str) -> tuple[Record, Record]:
    pending = tx.get("transfers", pending_id)
    if pending is None or pending["kind"] != PENDING:
        raise BrokerError(Code.NOT_FOUND, "HOLD_NOT_FOUND", f"hold {pending_id!r} not found",
                          {"hold": pending_id})
    state = tx.get("hold_states", pending_id)
    assert state is not None, "every pending transfer has a hold state"
    return pending, state


def resolve(tx: Tx, pending_id: str, kind: str, now: int, amount: int = 0) -> Record:
    """Resolve a hold exactly once. `post_pending` posts `amount` (1..held) and
    releases the rest; `void_pending` and `expire_pending` release everything."""
    pending, state = get_hold(tx, pending_id)
    if state["state"] != "pending":
        raise precondition("HOLD_ALREADY_RESOLVED",
                           f"hold {pending_id} was already {state['state']}", hold=pending_id)
    held = pending["amount"]
    if kind == POST_PENDING:
        if not isinstance(amount, int) or not 0 < amount <= held:
            raise BrokerError(Code.INVALID_ARGUMENT, "INVALID_AMOUNT",
                              f"post amount must be between 1 and the held {held}")
    else:
        amount = 0
    debit_id, credit_id = pending["debit_account_id"], pending["credit_account_id"]
    debit, credit = get_account(tx, debit_id), _side(tx, credit_id)
    seq = next_seq(tx, "transfer_seq")
    returns = grants.on_resolve(tx, debit, pending_id, amount, now) if grants.has_credits(debit) \
        else []
    _apply(tx, debit_id, debit, seq, debits_pending=-held, debits_posted=amount)
    _apply(tx, credit_id, credit, seq, credits_pending=-held, credits_posted=amount)
    resolution = _record(tx, _new_transfer(
        kind, debit_id, credit_id, amount, RESOLUTION_CODE[kind], now, pending_id=pending_id,
        released=held - amount), seq)
    tx.put("hold_states", pending_id, {
        "state": RESOLUTION_STATE[kind], "resolved_by": resolution["transfer_id"],
        "posted": amount, "released": held - amount, "resolve_ms": now})
    tx.delete("hold_expiry", f"{pending['timeout_ms']:020d}/{pending_id}")
    budgets.on_resolve(tx, pending_id, amount)  # the levels of a sub-budget's tree
    for issuer_account_id, freed in returns:  # freed credits of grants that expired meanwhile
        transfer(tx, debit["account_id"], issuer_account_id, freed, "grant_return", now)
    return resolution


def due_holds(tx: Tx, now: int, limit: int = 1000) -> list[str]:
    """Ids of pending holds whose timeout is at or before `now`, oldest first."""
    stop = f"{now + 1:020d}"
    return [key.split("/", 1)[1] for key, _ in due(tx, "hold_expiry", stop, limit)]


def account_transfers(tx: Tx, account_id: str, *, before_seq: int | None = None,
                      limit: int = 100) -> list[Record]:
    """Transfers touching an account, newest first, optionally before a seq."""
    stop = f"{account_id}/{before_seq:020d}" if before_seq else None
    rows = tx.scan("account_transfers", prefix=f"{account_id}/", stop=stop, reverse=True,
                   limit=limit)
    return [must_get(tx, "transfers", row["transfer_id"]) for _, row in rows]
