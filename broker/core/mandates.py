"""Mandates: every charge traces back to an intent the owner signed.

An owner registers Ed25519 mandate keys (it keeps the private keys) and signs mandates
offline (common/mandates.py): a wallet (with every sub-budget below it) or one agent
key, the most per job and in total, the models, an expiry. A wallet whose spend policy
(or one above it in its tree) says `require_mandate` refuses an authorization without
one. At Authorize the broker checks the mandate's signature with the owner's key and
its limits (`check`), in the same operation that holds the money; what its
authorizations hold and were charged is counted in `used` (spend.py keeps it, as it
keeps the spend counters), so its total holds under any concurrency. The authorization
and its receipt name the mandate's hash, and `audit` shows which charges of a period
were covered by a valid mandate. docs/delegation.md ("Mandates").
"""

from __future__ import annotations

import base64

from common import mandates as fmt
from common.errors import BrokerError, Code, invalid, not_found

from ..store.base import Record, Tx, must_get
from . import budgets, journal, pages, policy, spend, validate
from .access import Principal

# -- owners' mandate keys --------------------------------------------------------------


def _key_row(owner_id: str, key_id: str) -> str:
    return f"{owner_id}/{key_id}"


def register_key(tx: Tx, principal: Principal, public_key: bytes, now: int) -> Record:
    if len(public_key) != 32:
        raise invalid("public_key", "must be a raw 32-byte Ed25519 public key")
    key_id = fmt.key_id(public_key)
    found = tx.get("mandate_keys", _key_row(principal.owner_id, key_id))
    if found is not None:
        return found
    record = {"key_id": key_id, "owner_id": principal.owner_id,
              "public_key": base64.b64encode(public_key).decode(), "revoked": False,
              "create_ms": now, "revoke_ms": 0}
    tx.put("mandate_keys", _key_row(principal.owner_id, key_id), record)
    journal.append(tx, "mandate_key_registered", {"owner_id": principal.owner_id,
                                                  "key_id": key_id, "by": principal.key_id}, now)
    return record


def list_keys(tx: Tx, principal: Principal, page_size: int, page_token: str) -> Record:
    size = validate.page_size(page_size)
    prefix = f"{principal.owner_id}/"
    after = pages.decode(page_token)
    if after and not after.startswith(prefix):
        raise invalid("page_token", "belongs to another listing", "INVALID_PAGE_TOKEN")
    rows = list(tx.scan("mandate_keys", prefix=prefix,
                        start=after + "\x00" if after else None, limit=size + 1))
    return {"keys": [row for _, row in rows[:size]],
            "next_page_token": pages.encode(rows[size - 1][0]) if len(rows) > size else ""}


def revoke_key(tx: Tx, principal: Principal, key_id: str, now: int) -> Record:
    row = _key_row(principal.owner_id, validate.ident(key_id, "key_id"))
    record = tx.get("mandate_keys", row)
    if record is None:
        raise not_found("mandate_key", key_id)
    if not record["revoked"]:
        record.update(revoked=True, revoke_ms=now)
        tx.put("mandate_keys", row, record)
        journal.append(tx, "mandate_key_revoked", {"owner_id": principal.owner_id,
                                                   "key_id": key_id, "by": principal.key_id},
                       now)
    return record


# -- the authorization check ------------------------------------------------------------


def required(tx: Tx, wallet: Record) -> bool:
    """Whether the wallet's policy, or the policy of any wallet above it, requires one."""
    above = (must_get(tx, "wallets", level["parent_wallet_id"])
             for level in budgets.chain(tx, wallet["wallet_id"]))
    for each in (wallet, *above):
        pol, _ = policy.effective(tx, each)
        if pol is not None and pol.get("require_mandate"):
            return True
    return False


def verified(tx: Tx, owner_id: str, token: str) -> fmt.Mandate:
    """The mandate, its signature checked with the owner's registered, unrevoked key."""
    mandate = fmt.parse(token)
    key = tx.get("mandate_keys", _key_row(owner_id, mandate.key_id))
    if key is None:
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_KEY_UNKNOWN", "the mandate is "
                          "signed with a key that is not one of the owner's mandate keys",
                          {"key_id": mandate.key_id})
    if key["revoked"]:
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_KEY_REVOKED",
                          "the mandate's key was revoked", {"key_id": mandate.key_id})
    fmt.verify(mandate, base64.b64decode(key["public_key"]))
    return mandate


def covers_wallet(tx: Tx, mandate_wallet_id: str, wallet_id: str) -> bool:
    """The mandate's wallet is `wallet_id` or a wallet above it in its tree."""
    return mandate_wallet_id == wallet_id or any(
        level["parent_wallet_id"] == mandate_wallet_id for level in budgets.chain(tx, wallet_id))


def check(tx: Tx, principal: Principal, wallet: Record, token: str, amount: int,
          scope: Record, expire_ms: int, now: int) -> tuple[Record | None, int]:
    """For an authorization of `amount` on `wallet`: (the mandate's record, with its use
    so far, to bind with `bind`; the authorization's expiry, no later than the
    mandate's). (None, expire_ms) without a mandate where none is required. Raises,
    having changed nothing, when one is required and missing or does not cover it."""
    if not token:
        if required(tx, wallet):
            raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_REQUIRED",
                              "the wallet's spend policy requires a mandate signed by the "
                              "owner (AuthorizeRequest.mandate)", {"wallet": wallet["wallet_id"]})
        return None, expire_ms
    mandate = verified(tx, wallet["owner_id"], token)
    if now >= mandate.expire_ms:
        raise BrokerError(Code.FAILED_PRECONDITION, "MANDATE_EXPIRED", "the mandate has expired",
                          {"mandate_hash": mandate.mandate_hash})
    if not covers_wallet(tx, mandate.wallet_id, wallet["wallet_id"]):
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_WALLET_MISMATCH",
                          "the mandate is for another wallet", {"wallet": wallet["wallet_id"]})
    if mandate.agent_key_id and mandate.agent_key_id != principal.key_id:
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_AGENT_MISMATCH",
                          "the mandate is for another agent key", {"key_id": principal.key_id})
    if mandate.models and scope.get("model", "") not in mandate.models:
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_MODEL_NOT_ALLOWED",
                          f"the mandate allows only the models {', '.join(mandate.models)} "
                          "(name one in scope.model)", {"model": scope.get("model", "")})
    subject = f"mandate:{mandate.mandate_hash}"
    if amount > mandate.per_job:
        raise BrokerError(Code.PERMISSION_DENIED, "MANDATE_PER_JOB_EXCEEDED",
                          f"{amount} is above the mandate's maximum of {mandate.per_job} per job",
                          {"mandate_hash": mandate.mandate_hash, "per_job": str(mandate.per_job),
                           "requested": str(amount)},
                          quota_violations=[(subject, f"{amount} requested, at most "
                                                      f"{mandate.per_job} per job")])
    record = tx.get("mandates", mandate.mandate_hash) or new_record(mandate, wallet, now)
    if record["used"] + amount > mandate.total:
        left = mandate.total - record["used"]
        raise BrokerError(Code.RESOURCE_EXHAUSTED, "MANDATE_TOTAL_EXCEEDED",
                          f"the mandate's total of {mandate.total} would be exceeded: "
                          f"{record['used']} held or charged under it, {amount} requested",
                          {"mandate_hash": mandate.mandate_hash, "total": str(mandate.total),
                           "used": str(record["used"]), "requested": str(amount)},
                          quota_violations=[(subject, f"{amount} requested, {left} left")])
    return record, min(expire_ms, mandate.expire_ms)


def new_record(mandate: fmt.Mandate, wallet: Record, now: int) -> Record:
    return {"mandate_hash": mandate.mandate_hash, "owner_id": wallet["owner_id"],
            "key_id": mandate.key_id, "token": mandate.token, "wallet_id": mandate.wallet_id,
            "agent_key_id": mandate.agent_key_id, "per_job": mandate.per_job,
            "total": mandate.total, "models": list(mandate.models),
            "expire_ms": mandate.expire_ms, "used": 0, "create_ms": now}


def bind(tx: Tx, auth: Record, record: Record | None) -> None:
    """Name the mandate in the authorization and store it at its first use (its use is
    counted with the authorization's spend: spend.count and spend.release)."""
    if record is None:
        return
    auth["mandate_hash"] = record["mandate_hash"]
    if tx.get("mandates", record["mandate_hash"]) is None:
        tx.put("mandates", record["mandate_hash"], record)


def expiry_within(tx: Tx, auth: Record, expire_ms: int, now: int) -> int:
    """An expiry for `auth` (approved late) no later than its mandate's."""
    if not auth.get("mandate_hash"):
        return expire_ms
    latest = must_get(tx, "mandates", auth["mandate_hash"])["expire_ms"]
    if now >= latest:
        raise BrokerError(Code.FAILED_PRECONDITION, "MANDATE_EXPIRED", "the mandate has "
                          "expired: the authorization can no longer be approved",
                          {"mandate_hash": auth["mandate_hash"]})
    return min(expire_ms, latest)


# -- reading ----------------------------------------------------------------------------


def get(tx: Tx, principal: Principal, mandate_hash: str) -> Record:
    """A mandate used in the caller's tenant (an agent: one covering its wallet)."""
    record = tx.get("mandates", validate.ident(mandate_hash, "mandate_hash"))
    if record is None or record["owner_id"] != principal.owner_id or (
            principal.role == "agent" and not covers_wallet(tx, record["wallet_id"],
                                                            principal.wallet_id)):
        raise not_found("mandate", mandate_hash)
    return record


# -- the audit --------------------------------------------------------------------------


def _invalid_because(tx: Tx, auth: Record, receipt: Record) -> str:
    """Why the charge of `receipt` was not covered by a valid mandate ("" if it was),
    checked again from the stored mandate and key alone."""
    mandate_hash = receipt.get("mandate_hash", "")
    record = tx.get("mandates", mandate_hash) if mandate_hash else None
    if record is None:
        return "no mandate"
    try:
        mandate = fmt.parse(record["token"])
    except BrokerError:
        return "the stored mandate does not parse"
    key = tx.get("mandate_keys", _key_row(auth["owner_id"], mandate.key_id))
    if mandate.mandate_hash != record["mandate_hash"] or key is None:
        return "the mandate is not signed by a mandate key of the owner"
    try:
        fmt.verify(mandate, base64.b64decode(key["public_key"]))
    except BrokerError:
        return "the mandate's signature does not verify"
    if key["revoked"] and key["revoke_ms"] <= auth["create_ms"]:
        return f"the mandate key {mandate.key_id} was revoked before the authorization"
    if auth["create_ms"] >= mandate.expire_ms:
        return "authorized after the mandate expired"
    if not covers_wallet(tx, mandate.wallet_id, auth["wallet_id"]):
        return f"the mandate is for wallet {mandate.wallet_id}"
    if mandate.agent_key_id and mandate.agent_key_id != auth["key_id"]:
        return f"the mandate is for agent key {mandate.agent_key_id}"
    if mandate.models and auth["scope"].get("model", "") not in mandate.models:
        return f"model {auth['scope'].get('model', '')!r} is not among the mandate's"
    if receipt["held"] > mandate.per_job:
        return f"held {receipt['held']}, above the mandate's {mandate.per_job} per job"
    return ""


def audit(tx: Tx, from_ms: int, to_ms: int, owner_id: str = "") -> Record:
    """Every charge whose settlement period starts in [from_ms, to_ms) (of one owner,
    if given): {"charges": how many, "uncovered": [(what, why), ...]}. A charge is a
    receipt with a non-zero charge, or a settled lease (leases carry no mandate). Totals
    are checked over all time: the charges under a mandate, in settlement order, never
    add up above its total."""
    charged_under: dict[str, int] = {}
    receipts = sorted((row for _, row in tx.scan("receipts") if row["charged"]),
                      key=lambda r: (r["period_start_ms"], r["receipt_id"]))
    charges, uncovered = 0, []
    for receipt in receipts:
        mandate_hash = receipt.get("mandate_hash", "")
        total_before = charged_under.get(mandate_hash, 0)
        charged_under[mandate_hash] = total_before + receipt["charged"]
        if not from_ms <= receipt["period_start_ms"] < to_ms or \
                owner_id and receipt["owner_id"] != owner_id:
            continue
        charges += 1
        auth = must_get(tx, "authorizations", receipt["authorization_id"])
        why = _invalid_because(tx, auth, receipt)
        record = tx.get("mandates", mandate_hash) if mandate_hash else None
        if not why and record and total_before + receipt["charged"] > record["total"]:
            why = f"the mandate's total {record['total']} is exceeded"
        if why:
            uncovered.append((f"receipt {receipt['receipt_id']} (authorization "
                              f"{receipt['authorization_id']}, wallet {receipt['wallet_id']}, "
                              f"charged {receipt['charged']})", why))
    for _, lease in tx.scan("leases"):
        if lease["charged"] and from_ms <= lease["settle_ms"] < to_ms and \
                (not owner_id or lease["owner_id"] == owner_id):
            charges += 1
            uncovered.append((f"lease {lease['lease_id']} (wallet {lease['wallet_id']}, "
                              f"charged {lease['charged']})", "a lease carries no mandate"))
    return {"charges": charges, "uncovered": uncovered}


def check_use(tx: Tx) -> list[str]:
    """Each mandate's `used` is what its authorizations hold and were charged
    (spend.contribution); the audit checks it."""
    counted: dict[str, int] = {}
    for _, auth in tx.scan("authorizations"):
        if auth.get("mandate_hash"):
            counted[auth["mandate_hash"]] = counted.get(auth["mandate_hash"], 0) + \
                spend.contribution(auth)
    problems = []
    for mandate_hash, record in tx.scan("mandates"):
        if record["used"] != counted.get(mandate_hash, 0):
            problems.append(f"mandate {mandate_hash} counts {record['used']} used, its "
                            f"authorizations add up to {counted.get(mandate_hash, 0)}")
        if record["used"] > record["total"]:
            problems.append(f"mandate {mandate_hash} is used above its total {record['total']}")
    return problems
