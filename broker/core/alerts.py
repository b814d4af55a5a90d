"""Anomaly alerts from per-wallet baselines (a wallet is one agent's purse).

Baselines, learned as traffic flows:
- authorizations per minute and spend authorized per hour: exponentially weighted
  averages over completed minutes (weight 1/60) and hours (weight 1/24), counting
  quiet periods as zero;
- the models and workers the wallet has used.

Alerts:
- AUTHORIZATION_BURST / SPEND_BURST: the current minute's authorizations (hour's
  spend) exceed burst_factor x max(baseline, floor); at most one per minute (hour).
  The floor keeps a fresh or quiet wallet from alerting on its first steps.
- NEW_MODEL / NEW_WORKER: first use, once the wallet has warmup_authorizations behind it.
- DENIAL_RUN: denial_run refused authorizations in a row.
- APPROVAL_PENDING_TOO_LONG, REFILLS_PAUSED, AUDIT_FAILED: raised by their modules.

A policy may freeze the wallet on any kind (`freeze_on`). Alerts are stored apart
from the ledger and are not journaled; a freeze they cause is.
"""

from __future__ import annotations

from common.errors import invalid, not_found

from ..store.base import Record, Tx, must_get
from . import ledger, pages, validate, wallets
from .access import Principal, can_see_owner

KINDS = ("authorization_burst", "spend_burst", "new_model", "new_worker", "denial_run",
         "approval_pending_too_long", "refills_paused", "audit_failed")
DEFAULTS = {"burst_factor": 5, "min_authorizations_per_minute": 10,
            "min_spend_per_hour": 1_000_000, "denial_run": 5, "warmup_authorizations": 5}
MINUTE_MS, HOUR_MS = 60_000, 3_600_000
MINUTE_WEIGHT, HOUR_WEIGHT = 60, 24  # EWMA: new = old + (observed - old) / weight
MAX_SEEN = 256  # models and workers remembered per wallet


def check_rules(raw: Record, path: str) -> Record:
    def count(name: str, low: int, high: int) -> int:
        value = raw.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or \
                value and not low <= value <= high:
            raise invalid(f"{path}.{name}", f"must be 0 or between {low} and {high}")
        return value

    freeze_on = sorted(set(raw.get("freeze_on", [])))
    for kind in freeze_on:
        if kind not in KINDS:
            raise invalid(f"{path}.freeze_on", f"unknown alert kind {kind!r}")
    return {"burst_factor": count("burst_factor", 2, 1000),
            "min_authorizations_per_minute": count("min_authorizations_per_minute", 1, 10**6),
            "min_spend_per_hour": count("min_spend_per_hour", 1, 2**62),
            "denial_run": count("denial_run", 2, 1000),
            "warmup_authorizations": count("warmup_authorizations", 1, 10**6),
            "freeze_on": freeze_on}


def setting(rules: Record, name: str) -> int:
    return rules.get(name) or DEFAULTS[name]


# -- raising ------------------------------------------------------------------------------


def raise_alert(tx: Tx, kind: str, owner_id: str, wallet_id: str, message: str, now: int,
                rules: Record, *, observed: int = 0, baseline: int = 0,
                subject: str = "") -> Record:
    assert kind in KINDS, kind
    froze = False
    if wallet_id and kind in rules.get("freeze_on", []):
        wallet = must_get(tx, "wallets", wallet_id)
        if not wallet["frozen"]:
            wallets.set_frozen(tx, owner_id, wallet_id, True, now)
            froze = True
    seq = ledger.next_seq(tx, "alert_seq")
    alert = {"alert_id": f"alr_{seq}", "seq": seq, "kind": kind, "owner_id": owner_id,
             "wallet_id": wallet_id, "message": message, "observed": observed,
             "baseline": baseline, "subject": subject, "wallet_frozen": froze,
             "create_ms": now}
    tx.put("alerts", f"{seq:020d}", alert)
    if owner_id:
        tx.put("owner_alerts", f"{owner_id}/{seq:020d}", {})
    return alert


# -- baselines ----------------------------------------------------------------------------


def _baseline(tx: Tx, wallet: Record) -> Record:
    return tx.get("baselines", wallet["wallet_id"]) or {
        "authorizations": 0, "models": [], "workers": [], "denials": 0,
        "minute": 0, "minute_count": 0, "auth_rate_milli": 0, "alerted_minute": -1,
        "hour": 0, "hour_spend": 0, "spend_rate": 0, "alerted_hour": -1}


def _roll(rate: int, observed: int, gap: int, weight: int) -> int:
    """The average after the completed bucket (`observed`) and `gap - 1` quiet ones."""
    rate += (observed - rate) // weight
    for _ in range(min(gap - 1, 8 * weight)):
        rate -= rate // weight
        if not rate:
            break
    return 0 if gap - 1 > 8 * weight else rate


def _advance(base: Record, now: int) -> None:
    minute, hour = now // MINUTE_MS, now // HOUR_MS
    if minute != base["minute"]:
        if base["minute"]:
            base["auth_rate_milli"] = _roll(base["auth_rate_milli"], base["minute_count"] * 1000,
                                            minute - base["minute"], MINUTE_WEIGHT)
        base.update(minute=minute, minute_count=0)
    if hour != base["hour"]:
        if base["hour"]:
            base["spend_rate"] = _roll(base["spend_rate"], base["hour_spend"],
                                       hour - base["hour"], HOUR_WEIGHT)
        base.update(hour=hour, hour_spend=0)


def observe_authorization(tx: Tx, wallet: Record, auth: Record, rules: Record,
                          now: int) -> list[Record]:
    """Update the wallet's baselines with a new authorization; the alerts it raises."""
    base = _baseline(tx, wallet)
    _advance(base, now)
    raised = []
    factor = setting(rules, "burst_factor")
    owner_id, wallet_id = wallet["owner_id"], wallet["wallet_id"]

    base["minute_count"] += 1
    floor = setting(rules, "min_authorizations_per_minute") * 1000
    allowed = factor * max(base["auth_rate_milli"], floor)
    if base["minute_count"] * 1000 > allowed and base["alerted_minute"] != base["minute"]:
        base["alerted_minute"] = base["minute"]
        raised.append(raise_alert(
            tx, "authorization_burst", owner_id, wallet_id,
            f"{base['minute_count']} authorizations this minute, more than {factor} x the "
            f"baseline of {max(base['auth_rate_milli'], floor) / 1000:g} per minute",
            now, rules, observed=base["minute_count"], baseline=allowed // 1000 // factor))

    base["hour_spend"] += auth["amount"]
    floor = setting(rules, "min_spend_per_hour")
    allowed = factor * max(base["spend_rate"], floor)
    if base["hour_spend"] > allowed and base["alerted_hour"] != base["hour"]:
        base["alerted_hour"] = base["hour"]
        raised.append(raise_alert(
            tx, "spend_burst", owner_id, wallet_id,
            f"{base['hour_spend']} authorized this hour, more than {factor} x the baseline "
            f"of {allowed // factor} per hour", now, rules, observed=base["hour_spend"],
            baseline=allowed // factor))

    model = auth["scope"].get("model", "")
    if model and model not in base["models"]:
        if base["authorizations"] >= setting(rules, "warmup_authorizations"):
            raised.append(raise_alert(tx, "new_model", owner_id, wallet_id,
                                      f"first use of model {model!r}", now, rules,
                                      subject=model))
        if len(base["models"]) < MAX_SEEN:
            base["models"].append(model)
    base["authorizations"] += 1
    base["denials"] = 0
    tx.put("baselines", wallet_id, base)
    return raised


def observe_redemption(tx: Tx, wallet: Record, worker_id: str, rules: Record,
                       now: int) -> list[Record]:
    """A voucher of the wallet was redeemed by `worker_id`."""
    base = _baseline(tx, wallet)
    if worker_id in base["workers"]:
        return []
    raised = []
    if base["authorizations"] > setting(rules, "warmup_authorizations"):
        raised.append(raise_alert(tx, "new_worker", wallet["owner_id"], wallet["wallet_id"],
                                  f"first use of worker {worker_id}", now, rules,
                                  subject=worker_id))
    if len(base["workers"]) < MAX_SEEN:
        base["workers"].append(worker_id)
    tx.put("baselines", wallet["wallet_id"], base)
    return raised


def observe_denial(tx: Tx, wallet: Record, reason: str, rules: Record,
                   now: int) -> list[Record]:
    """An authorization of the wallet was refused (by policy, funds, or an owner)."""
    base = _baseline(tx, wallet)
    base["denials"] += 1
    run = setting(rules, "denial_run")
    raised = []
    if base["denials"] == run:
        raised.append(raise_alert(tx, "denial_run", wallet["owner_id"], wallet["wallet_id"],
                                  f"{run} authorizations denied in a row (last: {reason})",
                                  now, rules, observed=run, subject=reason))
    tx.put("baselines", wallet["wallet_id"], base)
    return raised


# -- reading ------------------------------------------------------------------------------


def _readable(tx: Tx, principal: Principal, wallet_id: str) -> tuple[str, str]:
    """(index table, key prefix) of the alerts the principal may read."""
    if wallet_id:
        wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
        if wallet is None or not can_see_owner(principal, wallet["owner_id"]):
            raise not_found("wallet", wallet_id)
    if principal.owner_id:
        return "owner_alerts", f"{principal.owner_id}/"
    return "alerts", ""


def _alert(tx: Tx, table: str, key: str) -> Record:
    seq_key = key.rsplit("/", 1)[-1] if table == "owner_alerts" else key
    return must_get(tx, "alerts", seq_key)


def list_alerts(tx: Tx, principal: Principal, wallet_id: str, page_size: int,
                page_token: str) -> Record:
    """Newest first; an owner (or tenant auditor) sees its tenant's, admins and global
    auditors every alert."""
    table, prefix = _readable(tx, principal, wallet_id)
    size = validate.page_size(page_size)
    before = pages.decode(page_token)
    if before and not before.startswith(prefix):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    found: list[Record] = []
    last = ""
    for key, _ in tx.scan(table, prefix=prefix, stop=before or None, reverse=True):
        alert = _alert(tx, table, key)
        if wallet_id and alert["wallet_id"] != wallet_id:
            continue
        if len(found) == size:
            return {"alerts": found, "next_page_token": pages.encode(last)}
        found.append(alert)
        last = key
    return {"alerts": found, "next_page_token": ""}


def alerts_after(tx: Tx, principal: Principal, wallet_id: str, after_seq: int,
                 limit: int = 100) -> list[Record]:
    """Alerts raised after `after_seq`, oldest first (for WatchAlerts)."""
    table, prefix = _readable(tx, principal, wallet_id)
    found = []
    for key, _ in tx.scan(table, prefix=prefix, start=f"{prefix}{after_seq + 1:020d}"):
        alert = _alert(tx, table, key)
        if not wallet_id or alert["wallet_id"] == wallet_id:
            found.append(alert)
            if len(found) == limit:
                break
    return found


def raised_after(tx: Tx, after_seq: int, limit: int = 1000) -> list[Record]:
    """Every alert raised after `after_seq`, oldest first (for counting them)."""
    return [a for _, a in tx.scan("alerts", start=f"{after_seq + 1:020d}", limit=limit)]


def last_seq(tx: Tx) -> int:
    last = next(iter(tx.scan("alerts", reverse=True, limit=1)), None)
    return last[1]["seq"] if last else 0
