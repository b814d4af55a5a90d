"""Mandates in the core: an owner's signed intent checked at every authorization (key,
signature, wallet, agent, models, per job, total, expiry), its total counted atomically
with the hold and released with it, receipts naming it, and the coverage audit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from broker.core import (
    approvals,
    audit,
    authorizations,
    delegation,
    leases,
    mandates,
    metering,
    policy,
    registry,
)
from broker.core.access import Principal
from common import mandates as fmt
from common import vouchers
from common.errors import BrokerError

from .test_delegation import PRICES, agent_of, refused, sub
from .world import World

DAY = 86_400_000


def setup(require: bool = True):
    w = World()
    owner, wallet, agent, owner_p = w.tenant()
    key = SigningKey.generate()
    w.run(lambda tx: mandates.register_key(tx, owner_p, bytes(key.verify_key), w.now))
    if require:
        w.run(lambda tx: policy.set_policy(tx, owner_p, wallet["wallet_id"],
                                           {"require_mandate": True}, False, w.now))
    return w, wallet, agent, owner_p, key


def signed(w: World, key: SigningKey, wallet_id: str, **kw) -> str:
    return fmt.sign(key, wallet_id=wallet_id, per_job=kw.pop("per_job", 5_000),
                    total=kw.pop("total", 12_000), expire_ms=kw.pop("expire_ms", w.now + DAY),
                    issued_ms=w.now, **kw)


def authorize(w: World, principal: Principal, amount: int, mandate: str, model: str = "m",
              ttl: int = 60):
    return w.run(lambda tx: authorizations.authorize(
        tx, principal, amount, {"model": model}, ttl, w.now, w.config, w.signer.key_id,
        mandate=mandate))


def test_format_round_trips_and_the_hash_is_of_the_canonical_payload():
    key = SigningKey(b"\x02" * 32)
    token = fmt.sign(key, wallet_id="w_1", per_job=10, total=20, expire_ms=2_000,
                     issued_ms=1_000, models=["b", "a", "a"], mandate_id="mdt_x")
    parsed = fmt.parse(token)
    assert parsed.models == ("a", "b") and parsed.key_id == fmt.key_id(bytes(key.verify_key))
    payload = vouchers.b64d(token.split(".")[2])
    assert payload == (b'{"agent":"","exp":2000,"iat":1000,"mid":"mdt_x","models":["a","b"],'
                       b'"per_job":10,"total":20,"typ":"mandate","wallet":"w_1"}')
    import hashlib
    assert parsed.mandate_hash == hashlib.sha256(payload).hexdigest()
    fmt.verify(parsed, bytes(key.verify_key))
    # Not canonical (a space), an unknown field, a float: malformed.
    for raw in (b'{"agent": "","exp":2000}', payload[:-1] + b',"x":1}',
                payload.replace(b'"total":20', b'"total":2.5')):
        bad = f"m1.{parsed.key_id}.{vouchers.b64e(raw)}.{token.split('.')[3]}"
        with pytest.raises(BrokerError) as info:
            fmt.parse(bad)
        assert info.value.reason == "MANDATE_MALFORMED"


def test_a_required_mandate_covers_the_authorization_and_the_receipt_names_it():
    w, wallet, agent, owner_p, key = setup()
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert (error.reason, error.code.value) == ("MANDATE_REQUIRED", "PERMISSION_DENIED")
    token = signed(w, key, wallet["wallet_id"], expire_ms=w.now + 30_000)
    auth = authorize(w, agent, 1_000, token)
    mandate_hash = fmt.parse(token).mandate_hash
    assert auth["mandate_hash"] == mandate_hash
    assert auth["expire_ms"] == w.now + 30_000  # no later than the mandate
    record = w.read(lambda tx: mandates.get(tx, owner_p, mandate_hash))
    assert record["used"] == 1_000 and record["total"] == 12_000
    # A worker runs it; the receipt names the mandate; the charge frees the rest.
    provider, worker_p = w.provider()
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now))
    claims = vouchers.verify(authorizations.voucher_token(auth, w.signer), w.verify_keys(), w.now)
    assert mandate_hash not in repr(claims)  # the voucher does not carry it
    ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "cpu", "m",
                                           w.now, w.config))
    usage = {"gpu_ms": 300, "input_tokens": 0, "output_tokens": 0, "calls": 0, "energy_mj": 0}
    receipt = w.run(lambda tx: metering.finish(tx, worker_p, ses["session_id"], usage, w.now,
                                               w.config, w.signer))
    stored = w.read(lambda tx: tx.get("receipts", receipt["receipt_id"]))
    assert stored["mandate_hash"] == mandate_hash
    assert "mandate_hash" not in receipt or not receipt["mandate_hash"]  # the worker's copy
    assert w.read(lambda tx: mandates.get(tx, owner_p, mandate_hash))["used"] == 300
    assert w.violations() == []
    report = w.read(lambda tx: mandates.audit(tx, 0, w.now + DAY))
    assert report == {"charges": 1, "uncovered": []}


def test_bad_mandates_are_refused_precisely_and_change_nothing():
    w, wallet, agent, owner_p, key = setup()
    wid = wallet["wallet_id"]
    other_owner, other_wallet, other_agent, other_p = w.tenant()
    stranger = SigningKey.generate()
    good = signed(w, key, wid)
    head, sig = good.rsplit(".", 1)
    forged = head + "." + vouchers.b64e(stranger.sign(head.encode()).signature)
    altered = signed(w, key, wid, total=10**9).rsplit(".", 1)[0] + "." + sig
    cases = [
        ("not a mandate", "MANDATE_MALFORMED", "INVALID_ARGUMENT"),
        (forged, "MANDATE_SIGNATURE_INVALID", "PERMISSION_DENIED"),
        (altered, "MANDATE_SIGNATURE_INVALID", "PERMISSION_DENIED"),
        (signed(w, stranger, wid), "MANDATE_KEY_UNKNOWN", "PERMISSION_DENIED"),
        (signed(w, key, wid, expire_ms=w.now), "MANDATE_EXPIRED", "FAILED_PRECONDITION"),
        (signed(w, key, other_wallet["wallet_id"]), "MANDATE_WALLET_MISMATCH",
         "PERMISSION_DENIED"),
        (signed(w, key, wid, agent_key_id="key_someone_else"), "MANDATE_AGENT_MISMATCH",
         "PERMISSION_DENIED"),
        (signed(w, key, wid, models=["other"]), "MANDATE_MODEL_NOT_ALLOWED",
         "PERMISSION_DENIED"),
        (signed(w, key, wid, per_job=999), "MANDATE_PER_JOB_EXCEEDED", "PERMISSION_DENIED"),
        (signed(w, key, wid, total=999), "MANDATE_TOTAL_EXCEEDED", "RESOURCE_EXHAUSTED"),
    ]
    for token, reason, code in cases:
        error = refused(w, lambda tx, token=token: authorizations.authorize(
            tx, agent, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id,
            mandate=token))
        assert (error.reason, error.code.value) == (reason, code), token[:40]
    # Another tenant's agent with this owner's mandate: the key is not its owner's.
    error = refused(w, lambda tx: authorizations.authorize(
        tx, other_agent, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id,
        mandate=good))
    assert error.reason == "MANDATE_KEY_UNKNOWN"
    # A revoked key: refused from then on.
    w.run(lambda tx: mandates.revoke_key(tx, owner_p, fmt.parse(good).key_id, w.now))
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id, mandate=good))
    assert error.reason == "MANDATE_KEY_REVOKED"
    assert w.violations() == []


def test_the_total_counts_holds_and_charges_and_frees_what_is_released():
    w, wallet, agent, owner_p, key = setup()
    token = signed(w, key, wallet["wallet_id"], per_job=5_000, total=8_000)
    first = authorize(w, agent, 5_000, token)
    authorize(w, agent, 3_000, token)
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 1, {"model": "m"}, 60, w.now, w.config, w.signer.key_id, mandate=token))
    assert error.reason == "MANDATE_TOTAL_EXCEEDED"
    assert error.metadata["used"] == "8000"
    w.run(lambda tx: authorizations.cancel(tx, agent, first["authorization_id"], w.now))
    authorize(w, agent, 5_000, token)  # the cancelled hold no longer counts
    w.now += 120_000  # both holds expire: the mandate is free again
    w.run(lambda tx: metering.expire_due(tx, w.now, w.config, w.signer))
    assert w.read(lambda tx: mandates.get(tx, owner_p, fmt.parse(token).mandate_hash))[
        "used"] == 0
    assert w.violations() == []


def test_a_mandate_for_a_wallet_covers_its_sub_budgets_which_keep_the_requirement():
    w, wallet, agent, owner_p, key = setup()
    oid = wallet["owner_id"]
    child = sub(w, agent, "", 6_000)
    grandchild = sub(w, agent_of(child, oid), "", 4_000)
    leaf = agent_of(grandchild, oid)
    error = refused(w, lambda tx: authorizations.authorize(
        tx, leaf, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "MANDATE_REQUIRED"
    token = signed(w, key, wallet["wallet_id"])
    assert authorize(w, leaf, 1_000, token)["mandate_hash"]
    # A mandate for the child does not cover the root or a sibling.
    for_child = signed(w, key, child["wallet"]["wallet_id"])
    assert authorize(w, leaf, 500, for_child)["mandate_hash"]
    error = refused(w, lambda tx: authorizations.authorize(
        tx, agent, 500, {"model": "m"}, 60, w.now, w.config, w.signer.key_id,
        mandate=for_child))
    assert error.reason == "MANDATE_WALLET_MISMATCH"
    # A child policy cannot drop the requirement.
    error = refused(w, lambda tx: delegation.create(
        tx, agent, "", "c", 100, 0, {}, {"require_mandate": False}, "", w.now, w.config))
    assert (error.reason, error.metadata["field"]) == ("SUB_BUDGET_WIDER_THAN_PARENT",
                                                       "policy.require_mandate")
    # An agent sees a mandate covering its wallet; a sibling's is NOT_FOUND to the root agent
    # only if it does not cover it.
    assert w.read(lambda tx: mandates.get(tx, leaf, fmt.parse(token).mandate_hash))
    with pytest.raises(BrokerError) as info:
        w.read(lambda tx: mandates.get(tx, agent, fmt.parse(for_child).mandate_hash))
    assert info.value.reason == "MANDATE_NOT_FOUND"
    assert w.violations() == []


def test_a_lease_is_refused_where_mandates_are_required():
    w, wallet, agent, owner_p, key = setup()
    error = refused(w, lambda tx: leases.create(tx, agent, "wkr_x", 60, "", set(), w.now))
    assert error.reason == "MANDATE_REQUIRED"


def test_an_approved_authorization_expires_with_its_mandate():
    w, wallet, agent, owner_p, key = setup(require=False)
    w.run(lambda tx: policy.set_policy(tx, owner_p, wallet["wallet_id"], {
        "require_mandate": True, "approvals": {"threshold": 100}}, False, w.now))
    token = signed(w, key, wallet["wallet_id"], expire_ms=w.now + 10_000)
    auth = authorize(w, agent, 1_000, token, ttl=3_600)
    assert auth["state"] == "pending_approval"
    w.now += 5_000
    _, approved = w.run(lambda tx: approvals.approve(tx, owner_p, auth["authorization_id"],
                                                     "", w.now))
    assert approved["expire_ms"] == w.now + 5_000
    assert w.violations() == []


def test_the_audit_names_charges_without_a_valid_mandate():
    w, wallet, agent, owner_p, key = setup(require=False)
    provider, worker_p = w.provider()
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now))

    def run_job(mandate: str) -> str:
        auth = authorize(w, agent, 1_000, mandate)
        claims = vouchers.verify(authorizations.voucher_token(auth, w.signer), w.verify_keys(),
                                 w.now)
        ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "cpu",
                                               "m", w.now, w.config))
        usage = {"gpu_ms": 100, "input_tokens": 0, "output_tokens": 0, "calls": 0,
                 "energy_mj": 0}
        w.run(lambda tx: metering.finish(tx, worker_p, ses["session_id"], usage, w.now,
                                         w.config, w.signer))
        return auth["authorization_id"]

    covered = run_job(signed(w, key, wallet["wallet_id"]))
    bare = run_job("")  # the policy did not require one
    report = w.read(lambda tx: mandates.audit(tx, 0, w.now + DAY))
    assert report["charges"] == 2
    assert [(what.split(" (")[1].split(",")[0], why) for what, why in report["uncovered"]] == [
        (f"authorization {bare}", "no mandate")]
    assert covered not in repr(report)
    # A key revoked later does not uncover earlier charges; the period filters.
    w.now += 1
    w.run(lambda tx: mandates.revoke_key(tx, owner_p, fmt.key_id(bytes(key.verify_key)), w.now))
    assert len(w.read(lambda tx: mandates.audit(tx, 0, w.now + DAY))["uncovered"]) == 1
    assert w.read(lambda tx: mandates.audit(tx, w.now + DAY, w.now + 2 * DAY))["charges"] == 0
    # Tampering with the stored mandate is found.
    auth = w.read(lambda tx: tx.get("authorizations", covered))

    def tamper(tx):
        record = tx.get("mandates", auth["mandate_hash"])
        record["token"] = record["token"][:-4] + "AAAA"
        tx.put("mandates", auth["mandate_hash"], record)
    w.run(tamper)
    reasons = [why for _, why in w.read(lambda tx: mandates.audit(tx, 0, w.now + DAY))[
        "uncovered"]]
    assert "the mandate's signature does not verify" in reasons


@settings(max_examples=25, deadline=None)
@given(amounts=st.lists(st.integers(1, 4_000), min_size=1, max_size=12),
       cancel=st.lists(st.booleans(), min_size=12, max_size=12))
def test_no_sequence_of_authorizations_uses_a_mandate_beyond_its_total(amounts, cancel):
    w, wallet, agent, owner_p, key = setup()
    token = signed(w, key, wallet["wallet_id"], per_job=4_000, total=9_000)
    used = 0
    for amount, drop in zip(amounts, cancel, strict=False):
        try:
            auth = authorize(w, agent, amount, token)
        except BrokerError as error:
            assert error.reason == "MANDATE_TOTAL_EXCEEDED" and used + amount > 9_000
            continue
        used += amount
        assert used <= 9_000
        if drop:
            w.run(lambda tx, a=auth: authorizations.cancel(tx, agent, a["authorization_id"],
                                                           w.now))
            used -= amount
    assert w.read(lambda tx: mandates.get(tx, owner_p, fmt.parse(token).mandate_hash))[
        "used"] == used
    assert w.read(audit.check) == []
