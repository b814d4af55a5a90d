"""Spend-control records (plain dicts) <-> PolicyService protobuf messages."""

from __future__ import annotations

import base64

from common import convert
from common.errors import invalid

from ..core import alerts, journal, policy
from ..store.base import Record
from ..v1 import policy_service_pb2 as pb

ALERT_KINDS = {kind: pb.AlertKind.Value(f"ALERT_KIND_{kind.upper()}") for kind in alerts.KINDS}
ALERT_KIND_NAMES = {number: kind for kind, number in ALERT_KINDS.items()}
APPROVAL_STATES = {"pending": pb.APPROVAL_STATE_PENDING, "approved": pb.APPROVAL_STATE_APPROVED,
                   "denied": pb.APPROVAL_STATE_DENIED, "expired": pb.APPROVAL_STATE_EXPIRED}
SOURCES = {"none": pb.POLICY_SOURCE_NONE, "tenant": pb.POLICY_SOURCE_TENANT,
           "wallet": pb.POLICY_SOURCE_WALLET}
DISPUTE_STATES = {"open": pb.DISPUTE_STATE_OPEN, "refunded": pb.DISPUTE_STATE_REFUNDED}
SCALARS = {"limits": tuple(policy.LIMIT_PERIODS),
           "approvals": ("threshold", "timeout_seconds", "reserve_funds", "alert_after_seconds"),
           "rate_limits": ("requests_per_minute", "burst", "spend_per_minute"),
           "refills": ("daily_cap", "pause_after_failures"),
           "alerts": ("burst_factor", "min_authorizations_per_minute", "min_spend_per_hour",
                      "denial_run", "warmup_authorizations")}


def policy_from_proto(msg: pb.SpendPolicy) -> Record:
    raw: Record = {"max_per_authorization": msg.max_per_authorization,
                   "max_prices": convert.prices_from_proto(msg.max_prices),
                   "scope_rules": {name: list(getattr(msg.scope_rules, name))
                                   for name in policy.EMPTY["scope_rules"]}}
    for part, names in SCALARS.items():
        raw[part] = {name: getattr(getattr(msg, part), name) for name in names}
    kinds = []
    for i, number in enumerate(msg.alerts.freeze_on):
        if number not in ALERT_KIND_NAMES:
            raise invalid(f"policy.alerts.freeze_on[{i}]", "is not an alert kind")
        kinds.append(ALERT_KIND_NAMES[number])
    raw["alerts"]["freeze_on"] = kinds
    raw["require_mandate"] = msg.require_mandate
    return raw


def policy_to_proto(p: Record) -> pb.SpendPolicy:
    if not p:
        return pb.SpendPolicy()
    msg = pb.SpendPolicy(owner_id=p["owner_id"], wallet_id=p["wallet_id"],
                         max_per_authorization=p["max_per_authorization"],
                         max_prices=convert.prices_to_proto(p["max_prices"]),
                         version=p["version"], update_time=convert.timestamp(p["update_ms"]))
    for name, values in p["scope_rules"].items():
        getattr(msg.scope_rules, name).extend(values)
    for part, names in SCALARS.items():
        for name in names:
            setattr(getattr(msg, part), name, p[part][name])
    msg.alerts.freeze_on.extend(ALERT_KINDS[k] for k in p["alerts"]["freeze_on"])
    msg.require_mandate = p.get("require_mandate", False)
    return msg


def status(s: Record) -> pb.SpendStatus:
    spent = s["spent"]
    return pb.SpendStatus(wallet_id=s["wallet_id"], spent_today=spent["day"],
                          spent_this_week=spent["week"], spent_this_month=spent["month"],
                          spent_all_time=spent["all_time"], refilled_today=s["refilled_today"],
                          consecutive_failed_jobs=s["failures"], refills_paused=s["paused"],
                          blast_radius_today=s["blast_radius_today"],
                          policy_source=SOURCES[s["source"]])


def approval(a: Record) -> pb.Approval:
    msg = pb.Approval(authorization_id=a["authorization_id"], wallet_id=a["wallet_id"],
                      amount=a["amount"], scope=convert.scope_to_proto(a["scope"]),
                      state=APPROVAL_STATES[a["state"]], reason=a["reason"],
                      funds_reserved=a["reserved"], request_time=convert.timestamp(a["request_ms"]),
                      deadline=convert.timestamp(a["deadline_ms"]), decided_by=a["decided_by"],
                      ttl_seconds=a["ttl_ms"] // 1000)
    if a["decide_ms"]:
        msg.decide_time.CopyFrom(convert.timestamp(a["decide_ms"]))
    return msg


def alert(a: Record) -> pb.Alert:
    return pb.Alert(alert_id=a["alert_id"], kind=ALERT_KINDS[a["kind"]], owner_id=a["owner_id"],
                    wallet_id=a["wallet_id"], message=a["message"], observed=a["observed"],
                    baseline=a["baseline"], subject=a["subject"],
                    wallet_frozen=a["wallet_frozen"], create_time=convert.timestamp(a["create_ms"]))


def alert_seq(alert_id: str) -> int:
    """The sequence number in an alert id ("alr_<n>")."""
    prefix, _, digits = alert_id.partition("_")
    if prefix != "alr" or not digits.isdigit() or len(digits) > 18:
        raise invalid("after_alert_id", "is not an alert id")
    return int(digits)


def journal_entry(e: Record) -> pb.JournalEntry:
    return pb.JournalEntry(seq=e["seq"], time=convert.timestamp(e["time_ms"]), kind=e["kind"],
                           data_json=journal.canonical(e["data"]).decode(),
                           prev_hash=e["prev"], hash=e["hash"])


def dispute(d: Record) -> pb.Dispute:
    return pb.Dispute(dispute_id=d["dispute_id"], receipt_id=d["receipt_id"],
                      authorization_id=d["authorization_id"], wallet_id=d["wallet_id"],
                      owner_id=d["owner_id"], reason=d["reason"], state=DISPUTE_STATES[d["state"]],
                      refunded=d["refunded"], create_time=convert.timestamp(d["create_ms"]))


def refund(r: Record) -> pb.Refund:
    return pb.Refund(
        refund_id=r["refund_id"], receipt_id=r["receipt_id"],
        authorization_id=r["authorization_id"], session_id=r["session_id"],
        wallet_id=r["wallet_id"], amount=r["amount"], provider_refund=r["provider_refund"],
        fee_refund=r["fee_refund"], credited_account_id=r["credited_account_id"],
        reason=r["reason"], dispute_id=r["dispute_id"],
        worker_usage_payload=base64.b64decode(r["worker_usage"]["payload"]),
        worker_usage_signature=base64.b64decode(r["worker_usage"]["signature"]),
        worker_usage_batch=base64.b64decode(r["worker_usage"].get("batch", "")),
        refund_time=convert.timestamp(r["refund_ms"]), key_id=r["key_id"],
        signature=base64.b64decode(r["signature"]),
        signed_payload=base64.b64decode(r["signed_payload"]))
