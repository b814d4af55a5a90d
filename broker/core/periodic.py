"""Pricing's timed work, run by the broker's sweep every half second and, until
nothing is left, at start-up before holds are expired (so that whatever fell due while
the broker was down happens exactly once, in order):

1. grant every subscription period that has started (subscriptions.grant_due);
2. expire grants whose time has come, returning unspent credits (subscriptions);
3. settle leases that have ended (lease_settlement.settle_due), before their holds
   could time out;
4. forget quotes long past their expiry (quotes.prune).
"""

from __future__ import annotations

from common import vouchers

from ..store.base import Tx
from . import lease_settlement, quotes, subscriptions
from .config import CoreConfig


def run_due(tx: Tx, now: int, config: CoreConfig, signer: vouchers.Signer) -> int:
    """Do what is due; returns how much was done (0: nothing was due)."""
    done = subscriptions.grant_due(tx, now)
    done += subscriptions.expire_due(tx, now)
    done += lease_settlement.settle_due(tx, now, config, signer)
    return done + quotes.prune(tx, now)
