"""Spend policies: what an agent may authorize, set by owners per wallet or as a tenant
default (a wallet's own policy, when it has one, applies instead of the default).

`check_authorization` is the one call the authorize path makes: it refuses what the
policy forbids (scope rules, maximum per authorization, period limits, spend
velocity), narrows the voucher's price caps to the policy's, and says whether the
authorization must wait for an owner's approval. Every refusal changes nothing.
docs/spend-controls.md describes the rules; docs/errors.md the reasons.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from common.errors import BrokerError, Code, invalid, not_found
from common.money import MAX_AMOUNT, PRICE_FIELDS, check_prices

from ..store.base import Record, Tx, must_get
from . import alerts, holds, journal, spend, validate
from .access import Principal
from .wallets import get_wallet

# Authorization states the spend controls add (see authorizations.py for the others).
PENDING_APPROVAL, DENIED = "pending_approval", "denied"

LIMIT_PERIODS = {"daily": "day", "weekly": "week", "monthly": "month", "all_time": "all_time"}
SCOPE_RULES = (("models", "model"), ("resource_classes", "resource_class"),
               ("workers", "worker_id"))
MAX_LIST = 64
MAX_APPROVAL_TIMEOUT_S = 7 * 86_400
DEFAULT_APPROVAL_TIMEOUT_S = 3_600
# A reservation outlives its approval deadline a little, so that the approval sweep
# (which denies the request and releases the reservation) always comes first.
RESERVATION_GRACE_MS = 60_000

EMPTY: Record = {
    "max_per_authorization": 0,
    "limits": dict.fromkeys(LIMIT_PERIODS, 0),
    "scope_rules": {f"{kind}_{name}": [] for name, _ in SCOPE_RULES
                    for kind in ("allowed", "blocked")},
    "max_prices": dict.fromkeys(PRICE_FIELDS, 0),
    "approvals": {"threshold": 0, "timeout_seconds": 0, "reserve_funds": False,
                  "alert_after_seconds": 0},
    "rate_limits": {"requests_per_minute": 0, "burst": 0, "spend_per_minute": 0},
    "refills": {"daily_cap": 0, "pause_after_failures": 0},
    "alerts": {"burst_factor": 0, "min_authorizations_per_minute": 0, "min_spend_per_hour": 0,
               "denial_run": 0, "warmup_authorizations": 0, "freeze_on": []},
    "require_mandate": False,  # every authorization carries an owner's mandate (mandates.py)
}


# -- validation -------------------------------------------------------------------------


def _count(value: int, path: str, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise invalid(path, f"must be between 0 and {top}")
    return value


def _amount(value: int, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_AMOUNT:
        raise invalid(path, f"must be between 0 and {MAX_AMOUNT}", "INVALID_AMOUNT")
    return value


def _ids(values: list[str], path: str) -> list[str]:
    if len(values) > MAX_LIST:
        raise invalid(path, f"at most {MAX_LIST} entries")
    return sorted({validate.ident(v, f"{path}[{i}]") for i, v in enumerate(values)})


def check_policy(raw: Record) -> Record:
    """A complete, validated policy from what the caller sent (missing parts are 0)."""
    out = copy.deepcopy(EMPTY)
    out["max_per_authorization"] = _amount(raw.get("max_per_authorization", 0),
                                           "policy.max_per_authorization")
    for name in LIMIT_PERIODS:
        out["limits"][name] = _amount(raw.get("limits", {}).get(name, 0), f"policy.limits.{name}")
    for name in out["scope_rules"]:
        out["scope_rules"][name] = _ids(raw.get("scope_rules", {}).get(name, []),
                                        f"policy.scope_rules.{name}")
    out["max_prices"] = check_prices(raw.get("max_prices", {}), "policy.max_prices")
    a = raw.get("approvals", {})
    out["approvals"] = {
        "threshold": _amount(a.get("threshold", 0), "policy.approvals.threshold"),
        "timeout_seconds": _count(a.get("timeout_seconds", 0), "policy.approvals.timeout_seconds",
                                  MAX_APPROVAL_TIMEOUT_S),
        "reserve_funds": bool(a.get("reserve_funds", False)),
        "alert_after_seconds": _count(a.get("alert_after_seconds", 0),
                                      "policy.approvals.alert_after_seconds",
                                      MAX_APPROVAL_TIMEOUT_S)}
    r = raw.get("rate_limits", {})
    out["rate_limits"] = {
        "requests_per_minute": _count(r.get("requests_per_minute", 0),
                                      "policy.rate_limits.requests_per_minute", 1_000_000),
        "burst": _count(r.get("burst", 0), "policy.rate_limits.burst", 1_000_000),
        "spend_per_minute": _amount(r.get("spend_per_minute", 0),
                                    "policy.rate_limits.spend_per_minute")}
    f = raw.get("refills", {})
    out["refills"] = {
        "daily_cap": _amount(f.get("daily_cap", 0), "policy.refills.daily_cap"),
        "pause_after_failures": _count(f.get("pause_after_failures", 0),
                                       "policy.refills.pause_after_failures", 1_000)}
    out["alerts"] = alerts.check_rules(raw.get("alerts", {}), "policy.alerts")
    out["require_mandate"] = bool(raw.get("require_mandate", False))
    return out


# -- storage ----------------------------------------------------------------------------


def _key(owner_id: str, wallet_id: str) -> str:
    return f"wallet/{wallet_id}" if wallet_id else f"owner/{owner_id}"


def effective(tx: Tx, wallet: Record) -> tuple[Record | None, str]:
    """(policy in force for the wallet or None, its source: "wallet", "tenant", "none")."""
    own = tx.get("policies", _key("", wallet["wallet_id"]))
    if own is not None:
        return own, "wallet"
    default = tx.get("policies", _key(wallet["owner_id"], ""))
    return (default, "tenant") if default is not None else (None, "none")


def alert_rules(tx: Tx, wallet: Record) -> Record:
    pol, _ = effective(tx, wallet)
    return (pol or EMPTY)["alerts"]


def _owned_wallet(tx: Tx, owner_id: str, wallet_id: str) -> Record:
    wallet = tx.get("wallets", validate.ident(wallet_id, "wallet_id"))
    if wallet is None or wallet["owner_id"] != owner_id:
        raise not_found("wallet", wallet_id)
    return wallet


def set_policy(tx: Tx, principal: Principal, wallet_id: str, raw: Record, clear: bool,
               now: int) -> Record:
    """Set (or clear) a wallet's policy, or the tenant default; journaled."""
    if wallet_id:
        _owned_wallet(tx, principal.owner_id, wallet_id)
    key = _key(principal.owner_id, wallet_id)
    old = tx.get("policies", key)
    if clear:
        if old is not None:
            tx.delete("policies", key)
            journal.append(tx, "policy_cleared", {"owner_id": principal.owner_id,
                                                  "wallet_id": wallet_id}, now)
        return {}
    record = {**check_policy(raw), "owner_id": principal.owner_id, "wallet_id": wallet_id,
              "version": (old["version"] if old else 0) + 1, "update_ms": now}
    tx.put("policies", key, record)
    journal.append(tx, "policy_set", {"owner_id": principal.owner_id, "wallet_id": wallet_id,
                                      "by": principal.key_id, "policy": record}, now)
    return record


def get_policy(tx: Tx, principal: Principal, wallet_id: str) -> tuple[Record, str]:
    """(policy in force, source) for a wallet the principal may see (an agent's own by
    default), or the tenant default when an owner names no wallet."""
    if wallet_id or principal.role == "agent" or not principal.owner_id:
        pol, source = effective(tx, get_wallet(tx, principal, wallet_id))
        return pol or {}, source
    pol = tx.get("policies", _key(principal.owner_id, ""))
    return (pol, "tenant") if pol is not None else ({}, "none")


# -- the authorization check ----------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the policy says about an authorization it allows."""

    needs_approval: bool = False
    reserve_funds: bool = False
    deadline_ms: int = 0  # an unanswered request is denied then
    alert_ms: int = 0  # APPROVAL_PENDING_TOO_LONG from then on


def check_authorization(tx: Tx, principal: Principal, wallet: Record, amount: int,
                        scope: Record, now: int) -> Verdict:
    """Refuse what the wallet's policy forbids; narrow `scope` (in place) to the
    policy's price caps. Raises BrokerError, having changed nothing."""
    pol, _ = effective(tx, wallet)
    if pol is None:
        return Verdict()
    _check_scope(pol["scope_rules"], scope)
    _narrow_prices(pol["max_prices"], scope)
    maximum = pol["max_per_authorization"]
    if maximum and amount > maximum:
        raise BrokerError(
            Code.PERMISSION_DENIED, "POLICY_AMOUNT_ABOVE_MAX",
            f"{amount} is above the policy's maximum of {maximum} per authorization",
            {"wallet": wallet["wallet_id"], "max_per_authorization": str(maximum),
             "requested": str(amount)},
            quota_violations=[(f"wallet:{wallet['wallet_id']}/max_per_authorization",
                               f"{amount} requested, at most {maximum} per authorization")])
    _check_limits(tx, wallet, pol["limits"], amount, now)
    _check_velocity(tx, principal, wallet, pol["rate_limits"]["spend_per_minute"], amount, now)
    rules = pol["approvals"]
    if rules["threshold"] and amount > rules["threshold"]:
        timeout_ms = (rules["timeout_seconds"] or DEFAULT_APPROVAL_TIMEOUT_S) * 1000
        alert_ms = rules["alert_after_seconds"] * 1000 or timeout_ms // 2
        return Verdict(True, rules["reserve_funds"], now + timeout_ms, now + alert_ms)
    return Verdict()


def _refusal(field: str, message: str, value: str) -> BrokerError:
    metadata = {"scope": field, "value": value}
    if field == "model":
        return BrokerError(Code.PERMISSION_DENIED, "POLICY_MODEL_NOT_ALLOWED", message, metadata)
    if field == "resource_class":
        return BrokerError(Code.PERMISSION_DENIED, "POLICY_RESOURCE_CLASS_NOT_ALLOWED", message,
                           metadata)
    return BrokerError(Code.PERMISSION_DENIED, "POLICY_WORKER_NOT_ALLOWED", message, metadata)


def _check_scope(rules: Record, scope: Record) -> None:
    for name, field in SCOPE_RULES:
        allowed, blocked = rules[f"allowed_{name}"], rules[f"blocked_{name}"]
        if not allowed and not blocked:
            continue
        value = scope.get(field, "")
        what = field.replace("_", " ").removesuffix(" id")
        if not value:
            raise _refusal(field, f"the policy restricts the {what}: name one in "
                           f"scope.{field}", value)
        if (allowed and value not in allowed) or value in blocked:
            raise _refusal(field, f"the policy does not allow the {what} {value!r}", value)


def _narrow_prices(caps: Record, scope: Record) -> None:
    wanted = scope["max_prices"]
    for name in PRICE_FIELDS:
        cap = caps.get(name, 0)
        if not cap:
            continue
        if not wanted.get(name):
            wanted[name] = cap  # an uncapped price gets the policy's cap
        elif wanted[name] > cap:
            raise BrokerError(Code.PERMISSION_DENIED, "POLICY_PRICE_ABOVE_MAX",
                              f"scope.max_prices.{name} {wanted[name]} is above the "
                              f"policy's cap of {cap}", {"price": name, "cap": str(cap)})


def _check_limits(tx: Tx, wallet: Record, limits: Record, amount: int, now: int) -> None:
    spent = spend.totals(tx, wallet["wallet_id"], now)
    for name, period in LIMIT_PERIODS.items():
        limit = limits[name]
        if not limit or spent[period] + amount <= limit:
            continue
        end = spend.period_end_ms(period, now)
        raise BrokerError(
            Code.RESOURCE_EXHAUSTED, "SPEND_LIMIT_EXCEEDED",
            f"the {name} spend limit of {limit} would be exceeded: {spent[period]} "
            f"spent or held, {amount} requested",
            {"wallet": wallet["wallet_id"], "limit": name, "limit_amount": str(limit),
             "spent": str(spent[period]), "requested": str(amount)},
            retry_after_ms=None if end is None else end - now,
            quota_violations=[(f"wallet:{wallet['wallet_id']}/{name}",
                               f"{name} limit {limit}: {spent[period]} spent or held, "
                               f"{amount} requested")])


def _check_velocity(tx: Tx, principal: Principal, wallet: Record, per_minute: int,
                    amount: int, now: int) -> None:
    if not per_minute:
        return
    recent = spend.recent_by_key(tx, wallet["wallet_id"], principal.key_id, now)
    used = sum(a for _, a in recent)
    if used + amount <= per_minute:
        return
    # When enough of the minute's authorizations have aged out (never, if the amount
    # alone is above the limit).
    retry, freed = None, 0
    if amount <= per_minute:
        for create_ms, held in recent:
            freed += held
            if used - freed + amount <= per_minute:
                retry = create_ms + spend.VELOCITY_WINDOW_MS - now
                break
    raise BrokerError(
        Code.RESOURCE_EXHAUSTED, "SPEND_VELOCITY_EXCEEDED",
        f"this key may authorize {per_minute} per minute: {used} in the last minute, "
        f"{amount} requested",
        {"key_id": principal.key_id, "spend_per_minute": str(per_minute), "used": str(used),
         "requested": str(amount)},
        retry_after_ms=None if retry is None else max(1, retry),
        quota_violations=[(f"api_key:{principal.key_id}/spend_per_minute",
                           f"{per_minute} per minute: {used} used, {amount} requested")])


# -- after an authorization -----------------------------------------------------------

# Refusals of Authorize that count towards a run of denials (alerts.DENIAL_RUN).
COUNTED_DENIALS = frozenset({
    "INSUFFICIENT_FUNDS", "WALLET_FROZEN", "SPEND_LIMIT_EXCEEDED", "SPEND_VELOCITY_EXCEEDED",
    "POLICY_AMOUNT_ABOVE_MAX", "POLICY_MODEL_NOT_ALLOWED", "POLICY_RESOURCE_CLASS_NOT_ALLOWED",
    "POLICY_WORKER_NOT_ALLOWED", "POLICY_PRICE_ABOVE_MAX"})


def request_approval(tx: Tx, auth: Record, ttl_ms: int, verdict: Verdict, now: int) -> None:
    """Make `auth` wait for an owner: no voucher, optionally a reservation hold."""
    hold_id = ""
    if verdict.reserve_funds:
        held = holds.wallet_hold(tx, auth["wallet_id"], auth["amount"], "approval_reserve",
                                 now, timeout_ms=verdict.deadline_ms + RESERVATION_GRACE_MS,
                                 user_data={"authorization_id": auth["authorization_id"]})
        hold_id = held["transfer_id"]
    auth.update(state=PENDING_APPROVAL, hold_id=hold_id, expire_ms=verdict.deadline_ms)
    auth_id = auth["authorization_id"]
    tx.put("authorizations", auth_id, auth)
    tx.put("approvals", auth_id, {
        "authorization_id": auth_id, "wallet_id": auth["wallet_id"],
        "owner_id": auth["owner_id"], "amount": auth["amount"], "scope": auth["scope"],
        "ttl_ms": ttl_ms, "state": "pending", "reason": "", "reserved": bool(hold_id),
        "request_ms": now, "deadline_ms": verdict.deadline_ms, "alert_ms": verdict.alert_ms,
        "decide_ms": 0, "decided_by": "", "seq": auth["seq"]})
    tx.put("pending_approvals", f"{auth['owner_id']}/{auth['seq']:020d}",
           {"authorization_id": auth_id})
    tx.put("approval_timers", f"{verdict.deadline_ms:020d}/{auth_id}/expire", {})
    if verdict.alert_ms < verdict.deadline_ms:
        tx.put("approval_timers", f"{verdict.alert_ms:020d}/{auth_id}/alert", {})
    journal.append(tx, "approval_requested", {
        "authorization_id": auth_id, "wallet_id": auth["wallet_id"], "amount": auth["amount"],
        "hold_id": hold_id, "deadline_ms": verdict.deadline_ms}, now)


def record_authorization(tx: Tx, wallet: Record, auth: Record, now: int) -> None:
    """Count a new authorization (held or waiting) and feed the anomaly baselines."""
    spend.count(tx, auth)
    alerts.observe_authorization(tx, wallet, auth, alert_rules(tx, wallet), now)


def record_redemption(tx: Tx, auth: Record, worker_id: str, now: int) -> None:
    """A voucher was redeemed: feed the worker baseline (first use alerts)."""
    wallet = must_get(tx, "wallets", auth["wallet_id"])
    alerts.observe_redemption(tx, wallet, worker_id, alert_rules(tx, wallet), now)


def record_denial(tx: Tx, principal: Principal, reason: str, now: int) -> None:
    """An agent's authorization was refused (in its own, failed operation): count it,
    in a separate one, towards a run of denials."""
    wallet = must_get(tx, "wallets", principal.wallet_id)
    alerts.observe_denial(tx, wallet, reason, alert_rules(tx, wallet), now)
