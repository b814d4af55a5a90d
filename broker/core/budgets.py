"""Sub-budget levels: what each level of a delegation tree holds and has spent.

A sub-budget (delegation.py) has no money of its own: its holds are holds on its root
wallet's account, and each hold also counts, in the same operation, against the
sub-budget and every ancestor sub-budget (`held`), each within its `cap`. When the
hold resolves, what was posted moves to `spent` at every level, the rest is freed;
a refund frees spend again. So no level can hold plus spend more than its cap, and
the root cannot be overdrawn (the ledger's no-overdraft check).

The ledger calls `on_resolve` for every hold it resolves (as it calls grants.py),
which is why this module must not import the ledger.
"""

from __future__ import annotations

from common.errors import BrokerError, Code

from ..store.base import Record, Tx, must_get

MAX_DEPTH = 4  # sub-budget levels below a root wallet


def get(tx: Tx, wallet_id: str) -> Record | None:
    """The wallet's sub-budget record, or None for a root (ordinary) wallet."""
    return tx.get("sub_budgets", wallet_id)


def chain(tx: Tx, wallet_id: str) -> list[Record]:
    """The wallet's sub-budget and its ancestors', nearest first ([] for a root)."""
    levels = []
    level = get(tx, wallet_id)
    while level is not None:
        levels.append(level)
        level = get(tx, level["parent_wallet_id"])
    return levels


def is_below(tx: Tx, wallet_id: str, ancestor_id: str) -> bool:
    """Whether `wallet_id` is a sub-budget somewhere below `ancestor_id` (not itself)."""
    return any(level["parent_wallet_id"] == ancestor_id for level in chain(tx, wallet_id))


def funding_wallet(tx: Tx, wallet_id: str) -> str:
    """The wallet whose ledger account pays for `wallet_id`'s holds (its root)."""
    level = get(tx, wallet_id)
    return level["root_wallet_id"] if level else wallet_id


def remaining(level: Record) -> int:
    return level["cap"] - level["held"] - level["spent"]


def require_room(tx: Tx, wallet_id: str, amount: int) -> None:
    """Raise, having changed nothing, unless every level above `wallet_id` has room
    for a hold of `amount` within its cap."""
    for level in chain(tx, wallet_id):
        if amount > remaining(level):
            raise BrokerError(
                Code.FAILED_PRECONDITION, "SUB_BUDGET_EXCEEDED",
                f"sub-budget {level['wallet_id']} has {remaining(level)} left of its cap "
                f"{level['cap']}, {amount} needed",
                {"wallet": level["wallet_id"], "available": str(remaining(level)),
                 "requested": str(amount)},
                quota_violations=[(f"sub_budget:{level['wallet_id']}",
                                   f"{amount} requested, {remaining(level)} left")])


def reserve(tx: Tx, wallet_id: str, hold_id: str, amount: int) -> None:
    """Count the hold `hold_id` of `amount` against every level above `wallet_id`
    (after `require_room`)."""
    levels = chain(tx, wallet_id)
    if not levels:
        return
    for level in levels:
        assert amount <= remaining(level), "require_room comes first"
        level["held"] += amount
        tx.put("sub_budgets", level["wallet_id"], level)
    tx.put("budget_holds", hold_id, {"wallet_id": wallet_id, "amount": amount})


def on_resolve(tx: Tx, hold_id: str, posted: int) -> None:
    """A hold resolved: free it at every level and count what was posted as spent."""
    row = tx.get("budget_holds", hold_id)
    if row is None:
        return
    for level in chain(tx, row["wallet_id"]):
        level["held"] -= row["amount"]
        level["spent"] += posted
        tx.put("sub_budgets", level["wallet_id"], level)
    tx.delete("budget_holds", hold_id)


def on_refund(tx: Tx, wallet_id: str, amount: int) -> None:
    """Part of a charge was refunded (to the root): it is no longer spent at any level."""
    for level in chain(tx, wallet_id):
        level["spent"] -= amount
        tx.put("sub_budgets", level["wallet_id"], level)


def allowance(tx: Tx, wallet_id: str) -> int:
    """What the wallet may still hold now: the least of every level's room and its
    root account's available balance."""
    account = must_get(tx, "accounts", funding_wallet(tx, wallet_id))
    available = account["credits_posted"] - account["debits_posted"] - account["debits_pending"]
    return min([available, *(remaining(level) for level in chain(tx, wallet_id))])


def stopped_by(tx: Tx, wallet_id: str, now: int | None = None) -> BrokerError | None:
    """Why the wallet cannot spend because of its tree (None if it can): a revoked
    level, an expired one (when `now` is given), a frozen ancestor or root. The wallet's
    own freeze is wallets.require_spendable's."""
    for level in chain(tx, wallet_id):
        level_id = level["wallet_id"]
        if level["revoked"]:
            return BrokerError(Code.FAILED_PRECONDITION, "SUB_BUDGET_REVOKED",
                               f"sub-budget {level_id} was revoked", {"wallet": level_id})
        if now is not None and now >= level["expire_ms"]:
            return BrokerError(Code.FAILED_PRECONDITION, "SUB_BUDGET_EXPIRED",
                               f"sub-budget {level_id} has expired", {"wallet": level_id})
        parent_id = level["parent_wallet_id"]
        if must_get(tx, "wallets", parent_id)["frozen"]:
            return BrokerError(Code.FAILED_PRECONDITION, "WALLET_FROZEN",
                               f"wallet {parent_id}, above this sub-budget, is frozen",
                               {"wallet": parent_id})
    return None


def check(tx: Tx) -> list[str]:
    """The levels add up: each holds exactly its subtree's pending budget holds, and
    none holds plus spends more than its cap or less than nothing."""
    problems = []
    held: dict[str, int] = {}
    for hold_id, row in tx.scan("budget_holds"):
        state = tx.get("hold_states", hold_id)
        if state is None or state["state"] != "pending":
            problems.append(f"budget hold {hold_id} is not a pending hold")
        for level in chain(tx, row["wallet_id"]):
            held[level["wallet_id"]] = held.get(level["wallet_id"], 0) + row["amount"]
    for wallet_id, level in tx.scan("sub_budgets"):
        if level["held"] != held.get(wallet_id, 0):
            problems.append(f"sub-budget {wallet_id} holds {level['held']}, its holds add up "
                            f"to {held.get(wallet_id, 0)}")
        if level["held"] < 0 or level["spent"] < 0 or remaining(level) < 0:
            problems.append(f"sub-budget {wallet_id} is overdrawn: cap {level['cap']}, held "
                            f"{level['held']}, spent {level['spent']}")
    return problems
