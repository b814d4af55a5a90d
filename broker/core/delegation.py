"""Sub-budgets: an agent (or its owner) hands a narrower budget to a sub-agent.

A sub-budget is a child wallet with its own agent key that spends its root wallet's
money (budgets.py keeps the levels). It is never wider than its parent: a cap within
the parent's allowance, a scope within the parent's (models, resource classes,
workers, price caps), an expiry no later, a spend policy no looser, at most
budgets.MAX_DEPTH levels below the root. Revoking or freezing a level stops every
descendant at once (killswitch.py stops their running sessions). docs/delegation.md.
"""

from __future__ import annotations

from typing import Any

from common.errors import BrokerError, Code, invalid, not_found, precondition
from common.money import PRICE_FIELDS, check_amount, check_prices

from ..store.base import Record, Tx, must_get
from . import budgets, journal, pages, policy, tenancy, validate, wallets
from .access import Principal, resolve_wallet_id
from .config import CoreConfig

DEFAULT_EXPIRY_MS = 30 * 86_400_000  # under a root wallet, which does not expire
SCOPE_LISTS = (("models", "model", "allowed_models"),
               ("resource_classes", "resource_class", "allowed_resource_classes"),
               ("worker_ids", "worker_id", "allowed_workers"))
# Policy numbers where 0 means "no limit" and a smaller one is stricter.
POLICY_LIMITS = (("max_per_authorization",), ("limits", "daily"), ("limits", "weekly"),
                 ("limits", "monthly"), ("limits", "all_time"),
                 ("rate_limits", "requests_per_minute"), ("rate_limits", "spend_per_minute"),
                 ("approvals", "threshold"),
                 *(("max_prices", name) for name in PRICE_FIELDS))


def _wider(field: str, message: str) -> BrokerError:
    return BrokerError(Code.PERMISSION_DENIED, "SUB_BUDGET_WIDER_THAN_PARENT",
                       f"{field}: {message}", {"field": field}, field_violations=[(field, message)])


# -- scopes -----------------------------------------------------------------------------


def check_scope(raw: Record) -> Record:
    """A validated sub-budget scope (empty lists and zero prices: no restriction here)."""
    out: Record = {}
    for name, _, _ in SCOPE_LISTS:
        values = raw.get(name, [])
        if len(values) > policy.MAX_LIST:
            raise invalid(f"scope.{name}", f"at most {policy.MAX_LIST} entries")
        out[name] = sorted({validate.ident(v, f"scope.{name}[{i}]") for i, v in enumerate(values)})
    out["max_prices"] = check_prices(raw.get("max_prices", {}), "scope.max_prices")
    return out


def scope_of(tx: Tx, wallet: Record) -> Record:
    """What the wallet may be spent on: a sub-budget's narrowed scope, or a root wallet's
    from its spend policy's allow lists and price caps."""
    level = budgets.get(tx, wallet["wallet_id"])
    if level is not None:
        return level["scope"]
    pol, _ = policy.effective(tx, wallet)
    if pol is None:
        return check_scope({})
    return {**{name: list(pol["scope_rules"][rule]) for name, _, rule in SCOPE_LISTS},
            "max_prices": dict(pol["max_prices"])}


def narrow(parent: Record, wanted: Record) -> Record:
    """The child's scope: `wanted` where given, the parent's otherwise; refuse anything
    the parent does not allow."""
    out: Record = {}
    for name, _, _ in SCOPE_LISTS:
        if not wanted[name]:
            out[name] = list(parent[name])
            continue
        outside = [v for v in wanted[name] if parent[name] and v not in parent[name]]
        if outside:
            raise _wider(f"scope.{name}", f"{outside[0]!r} is not allowed by the parent")
        out[name] = list(wanted[name])
    out["max_prices"] = {}
    for name in PRICE_FIELDS:
        cap, want = parent["max_prices"].get(name, 0), wanted["max_prices"].get(name, 0)
        if cap and want > cap:
            raise _wider(f"scope.max_prices.{name}", f"{want} is above the parent's cap {cap}")
        out["max_prices"][name] = want or cap
    return out


def _dig(record: Record, path: tuple[str, ...]) -> Any:
    for part in path:
        record = record[part]
    return record


def check_policy_not_looser(parent: Record | None, child: Record) -> None:
    """Every limit of the parent's policy is at least as strict in the child's."""
    if parent is None:
        return
    for path in POLICY_LIMITS:
        theirs, ours = _dig(parent, path), _dig(child, path)
        if theirs and (not ours or ours > theirs):
            field = "policy." + ".".join(path)
            raise _wider(field, f"{ours or 'no limit'} is looser than the parent's {theirs}")
    for kind in ("models", "resource_classes", "workers"):
        allowed, blocked = (f"allowed_{kind}", f"blocked_{kind}")
        theirs, ours = parent["scope_rules"][allowed], child["scope_rules"][allowed]
        if theirs and (not ours or set(ours) - set(theirs)):
            raise _wider(f"policy.scope_rules.{allowed}", "allows more than the parent's")
        if set(parent["scope_rules"][blocked]) - set(child["scope_rules"][blocked]):
            raise _wider(f"policy.scope_rules.{blocked}", "blocks less than the parent's")
    if parent.get("require_mandate") and not child["require_mandate"]:
        raise _wider("policy.require_mandate", "is off where the parent's is on")


# -- the authorization check --------------------------------------------------------------


def check_authorization(tx: Tx, wallet: Record, scope: Record, expire_ms: int,
                        now: int) -> int:
    """For a sub-budget: refuse when its tree stops it or the scope is outside it;
    narrow the price caps (in place). Returns the authorization's expiry, no later than
    the sub-budget's. Changes nothing in the store."""
    level = budgets.get(tx, wallet["wallet_id"])
    if level is None:
        return expire_ms
    stopped = budgets.stopped_by(tx, wallet["wallet_id"], now)
    if stopped is not None:
        raise stopped
    allowed = level["scope"]
    for name, field, _ in SCOPE_LISTS:
        if not allowed[name]:
            continue
        named = [scope[field]] if scope.get(field) else []
        if field == "worker_id":
            named += scope.get("worker_ids", [])
        if not named or any(v not in allowed[name] for v in named):
            raise BrokerError(Code.PERMISSION_DENIED, "SUB_BUDGET_SCOPE_NOT_ALLOWED",
                              f"the sub-budget allows only {', '.join(allowed[name])} as "
                              f"scope.{field}", {"scope": field, "wallet": wallet["wallet_id"]})
    for name in PRICE_FIELDS:
        cap, wanted = allowed["max_prices"].get(name, 0), scope["max_prices"].get(name, 0)
        if cap and wanted > cap:
            raise BrokerError(Code.PERMISSION_DENIED, "SUB_BUDGET_SCOPE_NOT_ALLOWED",
                              f"scope.max_prices.{name} {wanted} is above the sub-budget's "
                              f"cap of {cap}", {"scope": f"max_prices.{name}",
                                                "wallet": wallet["wallet_id"]})
        if cap and not wanted:
            scope["max_prices"][name] = cap
    return min(expire_ms, level["expire_ms"])


# -- operations -------------------------------------------------------------------------


def _parent(tx: Tx, principal: Principal, parent_wallet_id: str) -> Record:
    if principal.role == "agent":
        return wallets.get_wallet(tx, principal, parent_wallet_id)
    wallet = tx.get("wallets", validate.ident(parent_wallet_id, "parent_wallet_id"))
    if wallet is None or wallet["owner_id"] != principal.owner_id:
        raise not_found("wallet", parent_wallet_id)
    return wallet


def create(tx: Tx, principal: Principal, parent_wallet_id: str, display_name: str, cap: int,
           expire_ms: int, raw_scope: Record, raw_policy: Record | None,
           key_description: str, now: int, config: CoreConfig) -> Record:
    """A child wallet and its agent key under `parent_wallet_id`."""
    validate.name(key_description, "key_description")
    check_amount(cap, "cap")
    wanted = check_scope(raw_scope)
    child_policy = policy.check_policy(raw_policy) if raw_policy is not None else None
    parent = _parent(tx, principal, parent_wallet_id)
    parent_id = parent["wallet_id"]
    wallets.require_spendable(parent)
    stopped = budgets.stopped_by(tx, parent_id, now)
    if stopped is not None:
        raise stopped
    above = budgets.get(tx, parent_id)
    depth = (above["depth"] if above else 0) + 1
    if depth > budgets.MAX_DEPTH:
        raise precondition("SUB_BUDGET_TOO_DEEP", f"a tree has at most {budgets.MAX_DEPTH} "
                           "levels of sub-budgets below its root", wallet=parent_id)
    allowance = budgets.allowance(tx, parent_id)
    if cap > allowance:
        raise BrokerError(Code.FAILED_PRECONDITION, "SUB_BUDGET_CAP_ABOVE_ALLOWANCE",
                          f"cap {cap} is above the parent's available allowance {allowance}",
                          {"wallet": parent_id, "allowance": str(allowance), "cap": str(cap)},
                          quota_violations=[(f"wallet:{parent_id}",
                                             f"cap {cap} requested, {allowance} available")])
    latest = above["expire_ms"] if above else now + DEFAULT_EXPIRY_MS
    if expire_ms and expire_ms <= now:
        raise invalid("expire_time", "must be in the future")
    if expire_ms > latest and above:
        raise _wider("expire_time", f"is after the parent's expiry {latest}")
    parent_policy, _ = policy.effective(tx, parent)
    if child_policy is not None:
        check_policy_not_looser(parent_policy, child_policy)
    scope = narrow(scope_of(tx, parent), wanted)
    wallet = wallets.create_wallet(tx, parent["owner_id"], display_name, cap, 0, now, config)
    wallet_id = wallet["wallet_id"]
    level = {"wallet_id": wallet_id, "parent_wallet_id": parent_id,
             "root_wallet_id": above["root_wallet_id"] if above else parent_id,
             "owner_id": parent["owner_id"], "depth": depth, "cap": cap, "held": 0, "spent": 0,
             "expire_ms": expire_ms or latest, "scope": scope, "revoked": False,
             "create_ms": now, "created_by": principal.key_id}
    tx.put("sub_budgets", wallet_id, level)
    tx.put("wallet_children", f"{parent_id}/{wallet_id}", {"wallet_id": wallet_id})
    rules = child_policy if child_policy is not None else parent_policy
    if rules is not None:
        tx.put("policies", f"wallet/{wallet_id}", {
            **{k: rules.get(k, policy.EMPTY[k]) for k in policy.EMPTY},
            "owner_id": parent["owner_id"],
            "wallet_id": wallet_id, "version": 1, "update_ms": now})
    key = tenancy.create_api_key(tx, "agent", now, owner_id=parent["owner_id"],
                                 wallet_id=wallet_id, description=key_description)
    journal.append(tx, "sub_budget_created", {
        "wallet_id": wallet_id, "parent_wallet_id": parent_id, "cap": cap, "depth": depth,
        "expire_ms": level["expire_ms"], "by": principal.key_id}, now)
    return {"wallet": wallets.view(tx, wallet), "sub_budget": view(tx, level, now), **key}


def _visible(tx: Tx, principal: Principal, wallet_id: str, *, self_ok: bool) -> Record:
    """The sub-budget if the principal may see (or manage) it: the owner's, or for an
    agent key its own wallet's (`self_ok`) or a descendant's. NOT_FOUND otherwise."""
    level = budgets.get(tx, validate.ident(wallet_id, "wallet_id"))
    if level is not None:
        if principal.role == "agent":
            ancestors = [row["parent_wallet_id"] for row in budgets.chain(tx, wallet_id)]
            mine = principal.wallet_id in ancestors or (self_ok and principal.wallet_id ==
                                                        wallet_id)
        else:
            mine = level["owner_id"] == principal.owner_id
        if mine:
            return level
    raise not_found("sub_budget", wallet_id)


def get(tx: Tx, principal: Principal, wallet_id: str, now: int) -> Record:
    return view(tx, _visible(tx, principal, wallet_id, self_ok=True), now)


def list_children(tx: Tx, principal: Principal, parent_wallet_id: str, page_size: int,
                  page_token: str, now: int) -> Record:
    if principal.role == "agent":
        parent_id = resolve_wallet_id(principal, parent_wallet_id)
    else:
        parent_id = _parent(tx, principal, parent_wallet_id)["wallet_id"]
    found, token = pages.index_page(tx, "wallet_children", f"{parent_id}/", "sub_budgets",
                                    "wallet_id", page_size, page_token)
    return {"sub_budgets": [view(tx, level, now) for level in found],
            "next_page_token": token}


def revoke(tx: Tx, principal: Principal, wallet_id: str, now: int) -> Record:
    level = _visible(tx, principal, wallet_id, self_ok=False)
    if level["revoked"]:
        raise precondition("SUB_BUDGET_REVOKED", f"sub-budget {wallet_id} is already revoked",
                           wallet=wallet_id)
    level["revoked"] = True
    tx.put("sub_budgets", wallet_id, level)
    journal.append(tx, "sub_budget_revoked", {"wallet_id": wallet_id, "by": principal.key_id},
                   now)
    return view(tx, level, now)


def view(tx: Tx, level: Record, now: int) -> Record:
    """A sub-budget as callers see it: with what it may still hold and whether it is
    stopped."""
    wallet = must_get(tx, "wallets", level["wallet_id"])
    stopped = wallet["frozen"] or budgets.stopped_by(tx, level["wallet_id"], now) is not None
    return {**level, "available": max(0, budgets.allowance(tx, level["wallet_id"])),
            "stopped": stopped}
