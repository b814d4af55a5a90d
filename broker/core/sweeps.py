"""Periodic work of the spend controls, run by the daemon beside the hold expiry sweep
(and once at start-up, before it): unanswered approvals are denied, long-pending ones
alerted, and sessions stopped by the kill switch whose worker never finished are
settled on their last acknowledged usage."""

from __future__ import annotations

from common import vouchers

from ..store.base import Tx
from . import approvals, killswitch, metering, session
from .config import CoreConfig


def run(tx: Tx, now: int, config: CoreConfig, signer: vouchers.Signer) -> int:
    """Everything due at `now`; returns how many items were handled."""
    done = approvals.expire_due(tx, now)
    for key, ses in killswitch.overdue(tx, now):
        tx.delete("stop_deadlines", key)
        if ses["state"] == session.OPEN:
            metering.settle(tx, ses, metering.STOPPED, now, config, signer)
        done += 1
    return done
