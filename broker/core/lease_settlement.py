"""Settling a lease: at its end (the sweep, also for leases that ended while the broker
was down) or when the agent ends it early (EndLease).

One atomic operation: the lease's jobs are closed first (unredeemed vouchers expire,
running sessions settle on their acknowledged usage, as any hold that times out), then
the lease is charged money.lease_charge on its jobs' GPU time (the time after an early
end counts as unused reserved time), the charge is posted from the lease's hold (the
rest released), split into the provider's payout and the platform fee; the wallet's
spend counters drop by what was released. The settled lease carries a statement signed
with the broker's receipt-signing key. (No refill here: a lease is not a job, so it
leaves the refill rules' streak of failed jobs alone; the next job's settlement refills
the wallet.)
"""

from __future__ import annotations

import base64

from common import vouchers
from common.errors import precondition
from common.money import lease_charge

from ..store.base import Record, Tx, due, must_get
from . import journal, metering, spend
from .access import Principal
from .authorizations import EXPIRED, HELD, REDEEMED
from .config import CoreConfig
from .leases import ACTIVE, SETTLED, get, job_authorizations, used_ms

STATEMENT_FIELDS = ("lease_id", "worker_id", "start_ms", "end_ms", "reserved_ms",
                    "reserved_hour_price", "unused_reserved_bps", "held", "used_ms", "charged",
                    "worker_payout", "platform_fee", "released", "settle_ms")


def _close_jobs(tx: Tx, lease: Record, now: int, config: CoreConfig,
                signer: vouchers.Signer) -> None:
    for auth in job_authorizations(tx, lease["lease_id"]):
        if auth["state"] == HELD:
            auth["state"] = EXPIRED
            tx.put("authorizations", auth["authorization_id"], auth)
            journal.append(tx, "authorization_expired",
                           {"authorization_id": auth["authorization_id"]}, now)
        elif auth["state"] == REDEEMED:
            metering.settle(tx, must_get(tx, "sessions", auth["session_id"]), metering.HOLD_EXPIRED,
                            now, config, signer)


def settle(tx: Tx, lease: Record, now: int, config: CoreConfig,
           signer: vouchers.Signer) -> Record:
    _close_jobs(tx, lease, now, config, signer)
    lease = must_get(tx, "leases", lease["lease_id"])  # its jobs' GPU time, counted as they settled
    used = used_ms(tx, lease)
    charged = lease_charge(lease["reserved_ms"], used, lease["reserved_hour_price"],
                           lease["unused_reserved_bps"])
    payout, fee = metering.capture(tx, lease["hold_id"], charged, lease["provider_id"],
                                   {"lease_id": lease["lease_id"]}, now, config)
    lease.update(state=SETTLED, end_ms=min(now, lease["end_ms"]), used_ms=used,
                 charged=charged, worker_payout=payout, platform_fee=fee,
                 released=lease["held"] - charged, settle_ms=now)
    payload = journal.canonical({k: lease[k] for k in STATEMENT_FIELDS})
    lease["statement"] = {"key_id": signer.key_id,
                          "signed_payload": base64.b64encode(payload).decode(),
                          "signature": base64.b64encode(signer.sign(payload)).decode()}
    tx.put("leases", lease["lease_id"], lease)
    row = tx.get("worker_leases", lease["worker_id"])
    if row is not None and row["lease_id"] == lease["lease_id"]:
        tx.delete("worker_leases", lease["worker_id"])
    journal.append(tx, "lease_settled", {
        "lease_id": lease["lease_id"], "used_ms": used, "charged": charged, "payout": payout,
        "fee": fee, "released": lease["released"]}, now)
    spend.add(tx, lease["wallet_id"], lease["create_ms"], -lease["released"])
    return lease


def end(tx: Tx, principal: Principal, lease_id: str, now: int, config: CoreConfig,
        signer: vouchers.Signer) -> Record:
    """End a lease early (or at once after its end) and settle it."""
    lease = get(tx, principal, lease_id)
    if lease["state"] != ACTIVE:
        raise precondition("LEASE_ALREADY_SETTLED", "the lease is already settled",
                           lease_id=lease_id)
    tx.delete("lease_expiry", f"{lease['end_ms']:020d}/{lease_id}")
    return settle(tx, lease, now, config, signer)


def settle_due(tx: Tx, now: int, config: CoreConfig, signer: vouchers.Signer,
               limit: int = 100) -> int:
    """Settle every active lease whose end has come."""
    rows = due(tx, "lease_expiry", f"{now + 1:020d}", limit)
    for key, _ in rows:
        tx.delete("lease_expiry", key)
        settle(tx, must_get(tx, "leases", key.split("/", 1)[1]), now, config, signer)
    return len(rows)
