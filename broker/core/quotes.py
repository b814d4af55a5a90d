"""Quotes: ranked offers for a job, with prices locked for a stated time.

A quote stores every offer with the worker's price sheet at quoting time. Until the
quote expires, an authorization that cites it is bound to those prices (the session is
charged at them even if the worker raised its prices since); from expiry on, citing it
is refused. The binding is kept on the authorization, so it outlives the quote: a
voucher is charged at its bound prices for its whole life.

An authorization either names one offer of the quote (scope.worker_id) or asks for the
best one (select_best_offer): the first eligible offer, among those still live, decides
the model, and the voucher is valid at every eligible live offer of that model, best
first (scope.worker_ids), so that a client whose chosen worker fails before redeeming
can take the same voucher to the next one. The broker still redeems it at most once.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection

from common.errors import invalid, not_found, precondition
from common.money import MAX_AMOUNT, MAX_COUNTER, PRICE_FIELDS, prices_within

from ..store.base import Record, Tx, due
from . import job_history, journal, selection, validate
from .access import Principal, can_see_owner

KINDS = ("generate", "burn", "handler")
MAX_MODELS = 16
DEFAULT_LOCK_S, MAX_LOCK_S = 60, 3600
# The quote record outlives its lock a little, for GetQuote after the fact.
KEEP_AFTER_EXPIRY_MS = 3_600_000
MAX_BOUND_OFFERS = 8


def check_job(job: Record) -> Record:
    kind = job.get("kind", "")
    if kind not in KINDS:
        raise invalid("job.kind", f"must be one of {', '.join(KINDS)}", "UNKNOWN_JOB_KIND")
    models = list(job.get("models", []))
    if len(models) > MAX_MODELS:
        raise invalid("job.models", f"at most {MAX_MODELS} models")
    for i, model in enumerate(models):
        validate.ident(model, f"job.models[{i}]")
    if len(set(models)) != len(models):
        raise invalid("job.models", "lists a model twice")
    if kind == "generate" and not models:
        raise invalid("job.models", "name at least one acceptable model for generate")
    if kind != "generate" and models:
        raise invalid("job.models", f"{kind} jobs use no model; leave it empty")
    out = {"kind": kind, "models": models,
           "resource_class": validate.ident(job.get("resource_class", ""),
                                            "job.resource_class", required=False)}
    for name, most in (("input_tokens", MAX_COUNTER), ("output_tokens", MAX_COUNTER),
                       ("gpu_ms", MAX_COUNTER), ("latency_target_ms", MAX_COUNTER),
                       ("max_cost", MAX_AMOUNT)):
        value = job.get(name, 0)
        if not 0 <= value <= most:
            raise invalid(f"job.{name}", f"must be between 0 and {most}")
        out[name] = value
    if kind == "burn" and not out["gpu_ms"]:
        raise invalid("job.gpu_ms", "a burn job needs its expected GPU time")
    return out


def _known_models(tx: Tx) -> set[str]:
    return {m for _, w in tx.scan("workers") if w["active"] for m in w["capabilities"]["models"]}


def create(tx: Tx, principal: Principal, job: Record, lock_seconds: int,
           live_ids: Collection[str], leased_ids: Collection[str], now: int) -> Record:
    """Quote `job` against the live, unleased workers; store it with its prices locked."""
    job = check_job(job)
    lock_s = lock_seconds or DEFAULT_LOCK_S
    if not 0 < lock_s <= MAX_LOCK_S:
        raise invalid("lock_seconds", f"must be between 1 and {MAX_LOCK_S}")
    known = _known_models(tx)
    for model in job["models"]:
        if model not in known:
            raise not_found("model", model)
    offers = []
    for worker_id in sorted(set(live_ids) - set(leased_ids)):
        worker = tx.get("workers", worker_id)
        if worker is None or not worker["active"]:
            continue
        caps = worker["capabilities"]
        if job["resource_class"] and caps["resource_class"] != job["resource_class"]:
            continue
        models = [m for m in job["models"] if m in caps["models"]] if job["models"] else [""]
        offers += [selection.offer(job, worker, model,
                                   job_history.samples(tx, worker_id, model))
                   for model in models]
    quote = {"quote_id": "quo_" + secrets.token_hex(12), "owner_id": principal.owner_id,
             "wallet_id": principal.wallet_id, "job": job,
             "offers": selection.rank(job, offers), "create_ms": now,
             "expire_ms": now + lock_s * 1000}
    tx.put("quotes", str(quote["quote_id"]), quote)
    tx.put("quote_expiry", f"{quote['expire_ms']:020d}/{quote['quote_id']}", {})
    return quote


def get(tx: Tx, principal: Principal, quote_id: str) -> Record:
    """A quote of the caller's tenant (NOT_FOUND otherwise, as for a missing one)."""
    quote = tx.get("quotes", validate.ident(quote_id, "quote_id"))
    if quote is None or not can_see_owner(principal, quote["owner_id"]):
        raise not_found("quote", quote_id)
    return quote


def bind(tx: Tx, principal: Principal, quote_id: str, select_best: bool, scope: Record,
         live_ids: Collection[str], leased_ids: Collection[str],
         now: int) -> tuple[Record, Record | None]:
    """The scope and the binding for an authorization citing a quote; (scope, None)
    when it cites none. Raises, changing nothing, when the quote cannot be used."""
    if not quote_id:
        if select_best:
            raise invalid("quote_id", "select_best_offer needs a quote to choose from")
        return scope, None
    quote = get(tx, principal, quote_id)
    if now >= quote["expire_ms"]:
        raise precondition("QUOTE_EXPIRED", "the quote's prices are no longer locked; ask "
                           "for a new quote", quote_id=quote_id)
    worker_id, model = scope.get("worker_id", ""), scope.get("model", "")
    if select_best:
        if worker_id:
            raise invalid("scope.worker_id", "leave it empty when the broker selects the offer")
        usable = [o for o in quote["offers"] if o["eligible"]
                  and o["worker_id"] in live_ids and o["worker_id"] not in leased_ids
                  and (not model or o["model"] == model)
                  and not prices_within(o["prices"], scope.get("max_prices", {}))]
        if not usable:
            raise precondition("NO_ELIGIBLE_OFFER", "no live offer of the quote meets the "
                               "job's targets and the scope", quote_id=quote_id)
        chosen = [o for o in usable if o["model"] == usable[0]["model"]][:MAX_BOUND_OFFERS]
        scope = {**scope, "worker_ids": [o["worker_id"] for o in chosen]}
    else:
        if not worker_id:
            raise invalid("scope.worker_id", "name one of the quote's offers, or set "
                          "select_best_offer")
        chosen = [o for o in quote["offers"]
                  if o["worker_id"] == worker_id and (not model or o["model"] == model)][:1]
        if not chosen:
            raise invalid("scope.worker_id", "is not among the quote's offers",
                          "OFFER_NOT_IN_QUOTE")
    if chosen[0]["model"]:
        scope = {**scope, "model": chosen[0]["model"]}
    return scope, {"quote_id": quote_id, "offers": [
        {"worker_id": o["worker_id"], "endpoint": o["endpoint"], "model": o["model"],
         "prices": o["prices"]} for o in chosen]}


def attach(tx: Tx, auth: Record, binding: Record | None, now: int) -> Record:
    """Keep the binding on the new authorization (the prices its session will use)."""
    if binding is None:
        return auth
    auth["binding"] = binding
    tx.put("authorizations", auth["authorization_id"], auth)
    journal.append(tx, "authorization_bound", {
        "authorization_id": auth["authorization_id"], "quote_id": binding["quote_id"],
        "offers": [{"worker_id": o["worker_id"], "model": o["model"],
                    "prices": {k: o["prices"][k] for k in PRICE_FIELDS}}
                   for o in binding["offers"]]}, now)
    return auth


def bound_prices(auth: Record, worker_id: str) -> Record | None:
    """The prices an authorization's binding holds for a worker, if any."""
    for o in auth.get("binding", {}).get("offers", []):
        if o["worker_id"] == worker_id:
            return {k: o["prices"][k] for k in PRICE_FIELDS}
    return None


def prune(tx: Tx, now: int, limit: int = 500) -> int:
    """Forget quotes well past their expiry (no binding depends on them)."""
    rows = due(tx, "quote_expiry", f"{now - KEEP_AFTER_EXPIRY_MS + 1:020d}", limit)
    for key, _ in rows:
        tx.delete("quotes", key.split("/", 1)[1])
        tx.delete("quote_expiry", key)
    return len(rows)
