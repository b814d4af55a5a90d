"""Which prices a session is charged at, decided when its voucher is redeemed.

- A job under a lease (AuthorizeLeaseJob) is priced at zero: the lease's hold pays
  for the time (leases.py); its session's budget is the lease's hold, so that only the
  lease's end stops it. A leased worker redeems no other voucher.
- An authorization bound to a quote is charged the prices the quote locked for the
  redeeming worker, whatever the worker charges now.
- Any other voucher is charged the worker's current price sheet.

The session also records its lease (the model it records anyway, for receipts).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from common.errors import precondition
from common.money import PRICE_FIELDS

from ..store.base import Record, Tx, must_get
from . import job_history, leases, quotes, validate
from .access import Principal


def redemption_terms(tx: Tx, auth: Record, worker: Record, model: str,
                     now: int) -> tuple[Record, Record]:
    """(the worker with the prices that apply to this session, extra session fields)."""
    model = validate.ident(model, "open.model", required=False)
    lease_id = auth.get("lease_id", "")
    current = leases.active_lease(tx, worker["worker_id"], now)
    if current is not None and current["lease_id"] != lease_id:
        raise precondition("WORKER_LEASED", "the worker is leased; it redeems only its "
                           "lease's vouchers", worker_id=worker["worker_id"])
    fields: Record = {"lease_id": lease_id}
    if lease_id:
        prices = dict(leases.ZERO_PRICES)
        fields["budget"] = must_get(tx, "leases", lease_id)["held"]
    else:
        prices = quotes.bound_prices(auth, worker["worker_id"]) or \
            {k: worker["prices"][k] for k in PRICE_FIELDS}
    return {**worker, "prices": prices}, fields


def on_settle(tx: Tx, ses: Record, outcome: str, now: int) -> None:
    """A session settles (metering.settle, before its receipt may seal the usage away):
    a job under a lease adds its GPU time to the lease's used time, and a finished job
    joins the measured history."""
    leases.count_job(tx, ses)
    job_history.record(tx, ses, outcome, now)


def with_quote(tx: Tx, principal: Principal, quote_id: str, select_best: bool, scope: Record,
               live_ids: Collection[str], now: int,
               authorize: Callable[[Record], Record]) -> Record:
    """Run `authorize(scope)` (authorizations.authorize) with the scope a cited quote
    gives, and keep the quote's binding on the new authorization. Without a quote it is
    just `authorize(scope)`."""
    leased = leases.leased_worker_ids(tx, now) if quote_id else set()
    scope, binding = quotes.bind(tx, principal, quote_id, select_best, scope, live_ids,
                                 leased, now)
    return quotes.attach(tx, authorize(scope), binding, now)
