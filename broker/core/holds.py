"""Holds on a wallet, sub-budgets included: the one way the core reserves a wallet's
money for an authorization, an approval's reservation or a lease."""

from __future__ import annotations

from ..store.base import Record, Tx
from . import budgets, ledger


def wallet_hold(tx: Tx, wallet_id: str, amount: int, code: str, now: int, timeout_ms: int,
                user_data: dict[str, str]) -> Record:
    """Hold `amount` of the wallet's money until `timeout_ms`. A sub-budget's hold is a
    hold on its root wallet's account, counted against every level of its tree in the
    same operation (budgets.py); it resolves like any hold."""
    budgets.require_room(tx, wallet_id, amount)
    held = ledger.hold(tx, budgets.funding_wallet(tx, wallet_id), ledger.ESCROW_ACCOUNT,
                       amount, code, now, timeout_ms=timeout_ms, user_data=user_data)
    budgets.reserve(tx, wallet_id, held["transfer_id"], amount)
    return held
