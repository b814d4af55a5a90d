"""Sealed receipts, labels, statements and payouts on the pure core (no sockets)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from nacl.public import PrivateKey

from broker.core import authorizations, labels, metering, receipts, registry, statements, wallets
from broker.core.access import Principal
from broker.core.receipts import DAY_MS, HOUR_MS
from common import sealing, vouchers
from common.errors import BrokerError

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0,
          "output_tokens_1k_price": 2000, "call_price": 5}
LABELS = {"job": "quarterly-forecast", "purpose": "board-pack"}


def reason(fn) -> str:
    with pytest.raises(BrokerError) as caught:
        fn()
    return caught.value.reason


class Shop:
    """One owner with a wallet and an agent, one provider with a worker."""

    def __init__(self, w: World | None = None):
        self.w = w or World()
        self.owner, self.wallet, self.agent, self.owner_p = self.w.tenant(
            treasury=10_000_000, cap=1_000_000, refill_target=500_000, funded=500_000)
        self.provider, self.worker_p = self.w.provider()
        self.worker = self.w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, self.w.now))

    def register_key(self) -> PrivateKey:
        key = PrivateKey.generate()
        self.w.run(lambda tx: receipts.register_key(tx, self.owner_p, bytes(key.public_key),
                                                    self.w.now))
        return key

    def job(self, usage: dict, *, amount: int = 100_000, job_labels=None, agent=None):
        """Authorize, redeem and finish one job; returns (authorization, worker's receipt)."""
        w = self.w
        auth = w.run(lambda tx: authorizations.authorize(
            tx, agent or self.agent, amount, {"model": "m"}, 60, w.now, w.config,
            w.signer.key_id, job_labels=job_labels))
        token = authorizations.voucher_token(auth, w.signer)
        claims = vouchers.verify(token, w.verify_keys(), w.now)
        ses = w.run(lambda tx: metering.redeem(tx, self.worker_p, claims,
                                               self.worker["worker_id"], "cpu", "m", w.now,
                                               w.config))
        receipt = w.run(lambda tx: metering.finish(tx, self.worker_p, ses["session_id"], usage,
                                                   w.now, w.config, w.signer))
        return auth, receipt

    def stored(self, receipt_id: str) -> dict:
        return self.w.read(lambda tx: tx.get("receipts", receipt_id))


def test_a_sealed_receipt_keeps_only_the_sealed_itemised_part():
    shop = Shop()
    key = shop.register_key()
    usage = {"gpu_ms": 1500, "output_tokens": 40, "calls": 1}
    auth, worker_copy = shop.job(usage, job_labels=LABELS)
    auth_id = auth["authorization_id"]
    stored = shop.stored(worker_copy["receipt_id"])
    beside = set(receipts.CHARGE_CHECK_FIELDS)
    assert stored["sealed"] and set(receipts.ITEMISED_FIELDS) & set(stored) == beside
    assert stored["receipt_key_id"] == sealing.receipt_key_id(bytes(key.public_key))
    assert shop.w.read(lambda tx: receipts.get_key(tx, shop.owner["owner_id"]))["key_id"] \
        == stored["receipt_key_id"]
    # Nothing itemised is left in clear: the labels and the session's usage are gone.
    assert shop.w.read(lambda tx: labels.of(tx, auth_id)) == {}
    session = shop.w.read(lambda tx: tx.get("sessions", worker_copy["session_id"]))
    assert {"usage", "signed_usage", "model"}.isdisjoint(session)
    clear = json.dumps(shop.w.store.snapshot())
    for value in LABELS.values():
        assert value not in clear

    item = sealing.open_document(key, base64.b64decode(stored["sealed"]),
                                 shop.w.verify_keys())
    # The labels were sealed at Authorize (never stored in clear): inside, still sealed.
    assert item["labels"] == {}
    assert sealing.open_sealed(key, base64.b64decode(item["sealed_labels"])) == \
        {"labels": LABELS}
    assert (item["model"], item["resource_class"]) == ("m", "cpu")
    assert item["worker_id"] == shop.worker["worker_id"]
    assert item["usage"] == {"gpu_ms": 1500, "input_tokens": 0, "output_tokens": 40,
                             "calls": 1, "energy_mj": 0}
    assert item["settle_ms"] == shop.w.now and item["authorization_id"] == auth_id
    assert item["payment_model"] == "mixed"
    # What checks the charge stays beside the seal, the same as inside it.
    assert (stored["prices"], stored["worker_usage"]) == (item["prices"], item["worker_usage"])
    with pytest.raises(sealing.SealError, match="another receipt key"):
        sealing.open_document(PrivateKey.generate(), base64.b64decode(stored["sealed"]))

    # The outward part: amounts and the hour, signed.
    outward = json.loads(base64.b64decode(stored["signed_payload"]))
    charged = 1500 + 80 + 5
    assert (outward["charged"], outward["released"]) == (charged, 100_000 - charged)
    assert outward["period_start_ms"] == shop.w.now - shop.w.now % HOUR_MS
    assert outward["period_end_ms"] == outward["period_start_ms"] + HOUR_MS
    shop.w.signer.signing_key.verify_key.verify(base64.b64decode(stored["signed_payload"]),
                                                base64.b64decode(stored["signature"]))
    # The worker's copy: outward part plus what it reported, never the authorization.
    assert worker_copy["authorization_id"] == "" and worker_copy["sealed"] == ""
    assert worker_copy["usage"] == item["usage"]
    assert shop.w.violations() == []


def test_labels_are_sealed_at_authorize_once_the_owner_has_a_receipt_key():
    """Never stored in clear, so no freed page of the data file can hold them
    (issue 18, item 7)."""
    shop = Shop()
    key = shop.register_key()
    w = shop.w
    auth = w.run(lambda tx: authorizations.authorize(
        tx, shop.agent, 1_000, {}, 60, w.now, w.config, w.signer.key_id, job_labels=LABELS))
    clear = json.dumps(w.store.snapshot())
    assert all(value not in clear for value in LABELS.values())
    assert w.read(lambda tx: labels.of(tx, auth["authorization_id"])) == {}
    sealed = w.read(lambda tx: labels.sealed_of(tx, auth["authorization_id"]))
    assert sealing.open_sealed(key, base64.b64decode(sealed)) == {"labels": LABELS}


def test_without_a_receipt_key_the_itemised_part_stays_in_clear():
    shop = Shop()
    auth, worker_copy = shop.job({"gpu_ms": 10}, job_labels=LABELS)
    stored = shop.stored(worker_copy["receipt_id"])
    assert stored["sealed"] == "" and stored["labels"] == LABELS
    assert stored["payment_model"] == "metered_time" and stored["usage"]["gpu_ms"] == 10
    assert shop.w.read(lambda tx: labels.of(tx, auth["authorization_id"])) == LABELS


def test_vouchers_carry_only_technical_fields():
    shop = Shop()
    w = shop.w
    auth = w.run(lambda tx: authorizations.authorize(
        tx, shop.agent, 1_000, {"model": "m", "resource_class": "cpu"}, 60, w.now, w.config,
        w.signer.key_id, job_labels=LABELS, cache_secret=b"s" * 32))
    # Whatever else an authorization record carries stays out of the voucher.
    token = authorizations.voucher_token({**auth, "scope": {**auth["scope"], "labels": LABELS,
                                                            "owner_id": "own_x"}}, w.signer)
    claims = json.loads(vouchers.b64d(token.split(".")[2]))
    assert set(claims) == {"vid", "amt", "scope", "iat", "exp"}
    assert set(claims["scope"]) == {"model", "resource_class", "cache_scope"}
    for secret in (*LABELS.values(), shop.owner["owner_id"], shop.wallet["wallet_id"],
                   auth["authorization_id"]):
        assert secret not in json.dumps(claims)


@pytest.mark.parametrize("bad", [
    {f"k{i}": "v" for i in range(17)}, {"Upper": "v"}, {"": "v"}, {"k" * 64: "v"},
    {"k": "x" * 257}, {"k": "line\nbreak"}])
def test_bad_labels_are_refused_and_change_nothing(bad):
    shop = Shop()
    w = shop.w
    before = w.store.snapshot()
    with pytest.raises(BrokerError) as caught:
        w.run(lambda tx: authorizations.authorize(tx, shop.agent, 1_000, {}, 60, w.now,
                                                  w.config, w.signer.key_id, job_labels=bad))
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.metadata == {"field": "labels"}
    # Labels are never echoed, not even in an error.
    assert not [v for kv in bad.items() for v in kv if len(v) > 2 and v in caught.value.message]
    assert w.store.snapshot() == before


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33, bytes(32)])
def test_unusable_receipt_keys_are_refused(raw):
    shop = Shop()
    assert reason(lambda: shop.w.run(lambda tx: receipts.register_key(
        tx, shop.owner_p, raw, shop.w.now))) == "RECEIPT_KEY_INVALID"
    assert reason(lambda: shop.w.read(lambda tx: receipts.get_key(
        tx, shop.owner["owner_id"]))) == "RECEIPT_KEY_NOT_FOUND"


def test_statement_totals_per_wallet_and_payment_model_without_line_items():
    shop = Shop()
    w = shop.w
    w.now -= w.now % DAY_MS  # midnight: the jobs below fall in two hours of one day
    second = w.run(lambda tx: wallets.create_wallet(
        tx, shop.owner["owner_id"], "second", 1_000_000, 0, w.now, w.config))
    w.run(lambda tx: wallets.fund_wallet(tx, shop.owner["owner_id"], second["wallet_id"],
                                         300_000, w.now))
    agent2 = Principal("key_agent2", "agent", shop.owner["owner_id"], second["wallet_id"])
    _, a = shop.job({"gpu_ms": 2000}, job_labels=LABELS)  # metered_time: 2000
    w.now += HOUR_MS + 5
    _, b = shop.job({"output_tokens": 1000, "calls": 2})  # per_inference: 2000 + 10
    _, c = shop.job({"gpu_ms": 1}, agent=agent2)  # metered_time: 1
    key = shop.register_key()

    def statement(granularity=HOUR_MS, annex=False, start=w.now - 2 * HOUR_MS, end=w.now):
        return w.read(lambda tx: statements.owner_statement(
            tx, shop.owner_p, "", start, end, granularity, annex, w.config, w.signer))

    s = statement()
    # (roll-ups of trees: test_delegation.py; refunds: test_statement_refunds.py)
    root = {"parent_wallet_id": "", "depth": 0, "refunded": 0, "rollup_refunded": 0}
    assert s["wallets"] == sorted([
        {"wallet_id": shop.wallet["wallet_id"], "charged": 4010,
         "released": 200_000 - 4010, "job_count": 2, **root, "rollup_charged": 4010,
         "rollup_released": 200_000 - 4010, "rollup_job_count": 2},
        {"wallet_id": second["wallet_id"], "charged": 1, "released": 99_999,
         "job_count": 1, **root, "rollup_charged": 1, "rollup_released": 99_999,
         "rollup_job_count": 1}], key=lambda t: t["wallet_id"])
    assert s["payment_models"] == [
        {"payment_model": "metered_time", "charged": 2001, "job_count": 2, "refunded": 0},
        {"payment_model": "per_inference", "charged": 2010, "job_count": 1, "refunded": 0}]
    assert (s["total_charged"], s["job_count"]) == (4011, 3)
    # Coarse: the period is whole hours, and no receipt, session or label is in it.
    assert s["period_start_ms"] % HOUR_MS == 0 and s["period_end_ms"] % HOUR_MS == 0
    text = json.dumps(s)
    for r in (a, b, c):
        assert r["receipt_id"] not in text and r["session_id"] not in text
    for value in (*LABELS.values(), shop.worker["worker_id"], str(w.now)):
        assert value not in text
    signed = json.loads(base64.b64decode(s["signed_payload"]))
    assert signed["wallets"] == s["wallets"] and signed["type"] == "statement"

    # Only the period asked for: the first hour alone holds one job.
    first_hour = statement(start=w.now - HOUR_MS - 5, end=w.now - HOUR_MS - 4)
    assert first_hour["job_count"] == 1
    assert first_hour["period_end_ms"] - first_hour["period_start_ms"] == HOUR_MS
    day = statement(granularity=DAY_MS)
    assert day["period_start_ms"] % DAY_MS == 0 and day["granularity_ms"] == DAY_MS

    # The annex, sealed to the owner, lists the line items.
    annexed = statement(annex=True)
    document = sealing.open_document(key, base64.b64decode(annexed["annex"]), w.verify_keys())
    assert {i["receipt_id"] for i in document["items"]} == {r["receipt_id"] for r in (a, b, c)}


def test_statement_granularity_is_never_finer_than_the_setting():
    shop = Shop()
    w = shop.w
    w.config = replace(w.config, receipt_period_ms=DAY_MS)
    _, r = shop.job({"gpu_ms": 5})
    stored = shop.stored(r["receipt_id"])
    assert stored["period_end_ms"] - stored["period_start_ms"] == DAY_MS
    s = w.read(lambda tx: statements.owner_statement(
        tx, shop.owner_p, "", w.now - 1, w.now + 1, HOUR_MS, False, w.config, w.signer))
    assert s["granularity_ms"] == DAY_MS and s["period_start_ms"] % DAY_MS == 0


@pytest.mark.parametrize("start,end,granularity", [
    (10, 10, 0), (20, 10, 0), (-1, 10, 0), (0, 367 * DAY_MS, 0), (0, 10**16, 0),
    (0, 10, 12345)])
def test_bad_statement_periods_are_refused(start, end, granularity):
    shop = Shop()
    assert reason(lambda: shop.w.read(lambda tx: statements.owner_statement(
        tx, shop.owner_p, "", start, end, granularity, False, shop.w.config,
        shop.w.signer))) == "INVALID_ARGUMENT"


def test_statement_access():
    shop = Shop()
    w = shop.w
    other, *_ = w.tenant()

    def read(principal, owner_id="", annex=False):
        return lambda: w.read(lambda tx: statements.owner_statement(
            tx, principal, owner_id, 0, HOUR_MS, 0, annex, w.config, w.signer))

    assert reason(read(shop.owner_p, other["owner_id"])) == "OWNER_NOT_FOUND"
    assert reason(read(shop.owner_p, annex=True)) == "RECEIPT_KEY_NOT_REGISTERED"
    admin = Principal("key_admin", "admin")
    assert reason(read(admin)) == "INVALID_ARGUMENT"
    assert read(admin, other["owner_id"])()["owner_id"] == other["owner_id"]


def test_payouts_are_totals_per_period():
    shop = Shop()
    w = shop.w
    w.now -= w.now % DAY_MS
    _, a = shop.job({"gpu_ms": 4000})
    _, b = shop.job({"gpu_ms": 1000})
    w.now += 3 * HOUR_MS
    _, c = shop.job({"calls": 3})

    def payouts(principal, provider_id="", granularity=HOUR_MS):
        return w.read(lambda tx: statements.payout_statement(
            tx, principal, provider_id, w.now - DAY_MS, w.now + 1, granularity, w.config,
            w.signer))

    s = payouts(shop.worker_p)
    assert [(p["period_start_ms"] - (w.now - 3 * HOUR_MS), p["charged"], p["payout"],
             p["platform_fee"], p["job_count"]) for p in s["periods"]] == [
        (0, 5000, 5000 - 100 - 25, 125, 2), (3 * HOUR_MS, 15, 15, 0, 1)]
    assert (s["total_charged"], s["job_count"]) == (5015, 3)
    text = json.dumps(s)
    for secret in (shop.wallet["wallet_id"], shop.owner["owner_id"], "auth_", "rcpt_"):
        assert secret not in text
    assert [p["job_count"] for p in payouts(shop.worker_p, granularity=DAY_MS)["periods"]] \
        == [3]
    other_provider, _ = w.provider()
    assert reason(lambda: payouts(shop.worker_p, other_provider["provider_id"])) \
        == "PROVIDER_NOT_FOUND"
    tenant_auditor = Principal("key_aud", "auditor", shop.owner["owner_id"])
    assert reason(lambda: payouts(tenant_auditor, shop.provider["provider_id"])) \
        == "ROLE_NOT_ALLOWED"
    assert payouts(Principal("key_admin", "admin"),
                   shop.provider["provider_id"])["job_count"] == 3
