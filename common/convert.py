"""Core records (plain dicts) <-> protobuf messages."""

from __future__ import annotations

import base64

from google.protobuf.timestamp_pb2 import Timestamp

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import pricing_pb2
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .money import PRICE_FIELDS, SHEET_FIELDS, USAGE_FIELDS
from .records import Record

AUTH_STATES = {"held": auth_pb.AUTHORIZATION_STATE_HELD,
               "redeemed": auth_pb.AUTHORIZATION_STATE_REDEEMED,
               "settled": auth_pb.AUTHORIZATION_STATE_SETTLED,
               "cancelled": auth_pb.AUTHORIZATION_STATE_CANCELLED,
               "expired": auth_pb.AUTHORIZATION_STATE_EXPIRED,
               "pending_approval": auth_pb.AUTHORIZATION_STATE_PENDING_APPROVAL,
               "denied": auth_pb.AUTHORIZATION_STATE_DENIED}
TRANSFER_KINDS = {"posted": wallet_pb.TRANSFER_KIND_POSTED,
                  "pending": wallet_pb.TRANSFER_KIND_PENDING,
                  "post_pending": wallet_pb.TRANSFER_KIND_POST_PENDING,
                  "void_pending": wallet_pb.TRANSFER_KIND_VOID_PENDING,
                  "expire_pending": wallet_pb.TRANSFER_KIND_EXPIRE_PENDING}
ROLES = {admin_pb.ROLE_ADMIN: "admin", admin_pb.ROLE_OWNER: "owner",
         admin_pb.ROLE_AGENT: "agent", admin_pb.ROLE_WORKER: "worker",
         admin_pb.ROLE_AUDITOR: "auditor"}


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def balance(b: Record) -> res_pb.Balance:
    return res_pb.Balance(posted=b["posted"], pending=b["pending"], available=b["available"],
                          credits=b.get("credits", 0))  # (subscription credits, if any)


def prices_to_proto(p: Record) -> res_pb.PriceSheet:
    return res_pb.PriceSheet(**{name: p.get(name, 0) for name in SHEET_FIELDS})


def prices_from_proto(msg: res_pb.PriceSheet) -> Record:
    return {name: getattr(msg, name) for name in SHEET_FIELDS}


def caps_from_proto(msg: res_pb.PriceSheet) -> Record:
    """A Scope's price caps: the usage prices only."""
    return {name: getattr(msg, name) for name in PRICE_FIELDS}


def usage_to_proto(u: Record) -> res_pb.Usage:
    return res_pb.Usage(**{name: u.get(name, 0) for name in USAGE_FIELDS})


def usage_from_proto(msg: res_pb.Usage) -> Record:
    return {name: getattr(msg, name) for name in USAGE_FIELDS}


def scope_from_proto(msg: res_pb.Scope) -> Record:
    # cache_scope is set by the broker only, never taken from the caller.
    return {"resource_class": msg.resource_class, "model": msg.model,
            "max_prices": caps_from_proto(msg.max_prices), "worker_id": msg.worker_id,
            "worker_ids": list(msg.worker_ids)}


def scope_to_proto(s: Record) -> res_pb.Scope:
    return res_pb.Scope(resource_class=s["resource_class"], model=s["model"],
                        max_prices=prices_to_proto(s["max_prices"]), worker_id=s["worker_id"],
                        cache_scope=s.get("cache_scope", ""),
                        worker_ids=s.get("worker_ids", []))


def wallet(w: Record) -> wallet_pb.Wallet:
    return wallet_pb.Wallet(wallet_id=w["wallet_id"], owner_id=w["owner_id"],
                            display_name=w["display_name"], cap=w["cap"],
                            refill_target=w["refill_target"], frozen=w["frozen"],
                            balance=balance(w["balance"]), create_time=timestamp(w["create_ms"]))


def transfer(t: Record) -> wallet_pb.Transfer:
    return wallet_pb.Transfer(transfer_id=t["transfer_id"],
                              debit_account_id=t["debit_account_id"],
                              credit_account_id=t["credit_account_id"], amount=t["amount"],
                              kind=TRANSFER_KINDS[t["kind"]], pending_id=t["pending_id"],
                              code=t["code"], create_time=timestamp(t["create_ms"]),
                              released=t.get("released", 0))


def authorization(a: Record, *, voucher: str = "",
                  labels: dict[str, str] | None = None) -> auth_pb.Authorization:
    return auth_pb.Authorization(
        authorization_id=a["authorization_id"], wallet_id=a["wallet_id"], amount=a["amount"],
        scope=scope_to_proto(a["scope"]), state=AUTH_STATES[a["state"]],
        voucher=voucher,
        expire_time=timestamp(a["expire_ms"]), create_time=timestamp(a["create_ms"]),
        charged=a["charged"], receipt_id=a["receipt_id"], labels=labels or {},
        quote_id=a.get("binding", {}).get("quote_id", ""),
        offers=[bound_offer(o) for o in a.get("binding", {}).get("offers", [])],
        lease_id=a.get("lease_id", ""), mandate_hash=a.get("mandate_hash", ""))


def bound_offer(o: Record) -> pricing_pb2.BoundOffer:
    return pricing_pb2.BoundOffer(worker_id=o["worker_id"], endpoint=o["endpoint"],
                                  model=o["model"], prices=prices_to_proto(o["prices"]))


def receipt(r: Record) -> res_pb.Receipt:
    """A stored receipt (sealed, or with its itemised part in clear) or a worker's copy
    (see core/receipts.py)."""
    msg = res_pb.Receipt(
        receipt_id=r["receipt_id"], authorization_id=r["authorization_id"],
        held=r["held"], charged=r["charged"],
        worker_payout=r["worker_payout"], platform_fee=r["platform_fee"],
        released=r["released"], key_id=r["key_id"],
        signature=base64.b64decode(r["signature"]),
        signed_payload=base64.b64decode(r["signed_payload"]),
        period_start=timestamp(r["period_start_ms"]), period_end=timestamp(r["period_end_ms"]),
        sealed_itemised=base64.b64decode(r["sealed"]), receipt_key_id=r["receipt_key_id"],
        mandate_hash=r.get("mandate_hash", ""), wallet_id=r.get("wallet_id", ""))
    if "usage" in r:  # the itemised part in clear
        msg.session_id = r["session_id"]
        msg.usage.CopyFrom(usage_to_proto(r["usage"]))
        msg.outcome = r["outcome"]
        msg.settle_time.CopyFrom(timestamp(r["settle_ms"]))
    if "worker_usage" in r:  # also beside a seal: what checks the charge
        msg.prices.CopyFrom(prices_to_proto(r["prices"]))
        msg.worker_usage_payload = base64.b64decode(r["worker_usage"]["payload"])
        msg.worker_usage_signature = base64.b64decode(r["worker_usage"]["signature"])
        msg.worker_usage_batch = base64.b64decode(r["worker_usage"].get("batch", ""))
    return msg


def capabilities_from_proto(msg: registry_pb.Capabilities) -> Record:
    return {"resource_class": msg.resource_class, "gpu_name": msg.gpu_name,
            "gpu_memory_bytes": msg.gpu_memory_bytes, "models": list(msg.models),
            "meter": msg.meter, "gpu_uuid": msg.gpu_uuid, "driver_version": msg.driver_version,
            "energy_supported": msg.energy_supported,
            "model_sizes": [(s.model, s.parameters) for s in msg.model_sizes]}


def capabilities_to_proto(c: Record) -> registry_pb.Capabilities:
    """From a stored (or the worker's own) record, whose model_sizes is a dict."""
    return registry_pb.Capabilities(
        **{k: v for k, v in c.items() if k != "model_sizes"},
        model_sizes=[registry_pb.ModelSize(model=m, parameters=n)
                     for m, n in c.get("model_sizes", {}).items()])


def offer(w: Record) -> registry_pb.Offer:
    return registry_pb.Offer(worker_id=w["worker_id"], endpoint=w["endpoint"],
                             capabilities=capabilities_to_proto(w["capabilities"]),
                             prices=prices_to_proto(w["prices"]),
                             usage_public_key=bytes.fromhex(w.get("usage_public_key", "")))
