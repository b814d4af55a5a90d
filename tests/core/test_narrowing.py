"""Vouchers narrowed offline: the chain a worker verifies, and single use across the
family at redemption (each voucher at most once, never more than the original's hold)."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey

from broker.core import authorizations, delegation, metering, registry
from common import narrowing, vouchers
from common.errors import BrokerError

from .test_delegation import PRICES, agent_of
from .world import World


def setup(amount: int = 10_000, **kw):
    w = World()
    owner, wallet, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    if kw.get("sub_budget"):
        child = w.run(lambda tx: delegation.create(tx, agent, "", "c", 20_000, 0, {}, None, "",
                                                   w.now, w.config))
        agent = agent_of(child, owner["owner_id"])
    provider, worker_p = w.provider()
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m", "n"]},
        PRICES, w.now))
    holder = SigningKey.generate()
    auth = w.run(lambda tx: authorizations.authorize(
        tx, agent, amount, {"model": "m"}, 60, w.now, w.config, w.signer.key_id,
        holder_key=bytes(holder.verify_key)))
    token = authorizations.voucher_token(auth, w.signer)
    return w, agent, worker_p, worker, holder, auth, token


def narrow(token, key, amount, exp, scope=None, nk=""):
    return narrowing.derive(token, key, amount=amount, expire_ms=exp,
                            scope={"model": "m"} if scope is None else scope,
                            next_public_key=nk)


def redeem(w, worker_p, worker, token):
    claims = vouchers.verify(token, w.verify_keys(), w.now)
    return w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "cpu",
                                            "m", w.now, w.config))


def finish(w, worker_p, session_id, gpu_ms):
    usage = {"gpu_ms": gpu_ms, "input_tokens": 0, "output_tokens": 0, "calls": 0,
             "energy_mj": 0}
    return w.run(lambda tx: metering.finish(tx, worker_p, session_id, usage, w.now, w.config,
                                            w.signer))


def test_a_narrowed_voucher_verifies_offline_and_names_no_identity():
    w, agent, _, _, holder, auth, token = setup()
    sub_key = SigningKey.generate()
    derived = narrow(token, holder, 4_000, auth["expire_ms"] - 1, {"model": "m"},
                     narrowing.public_key_text(sub_key))
    claims = vouchers.verify(derived, w.verify_keys(), w.now)
    assert (claims.amount, claims.family_id, len(claims.chain)) == (4_000, auth["voucher_id"], 2)
    # Narrowed again by the sub-agent, with the key the first block named.
    again = narrow(derived, sub_key, 1_000, auth["expire_ms"] - 2)
    assert vouchers.verify(again, w.verify_keys(), w.now).amount == 1_000
    # No block names the agent, the wallet, the owner or the authorization.
    for block in again.split("~")[1:]:
        text = vouchers.b64d(block.split(".")[0]).decode()
        assert set(json.loads(text)) <= {"vid", "amt", "exp", "scope", "nk"}
        for secret in (agent.wallet_id, agent.owner_id, auth["authorization_id"]):
            assert secret not in text


@pytest.mark.parametrize("change, reason", [
    (dict(amount=10_001), "VOUCHER_WIDENED"),
    (dict(exp=+1), "VOUCHER_WIDENED"),
    (dict(scope={"model": "n"}), "VOUCHER_WIDENED"),
    (dict(scope={}), "VOUCHER_WIDENED"),
    (dict(amount=0), "VOUCHER_CHAIN_BROKEN"),
])
def test_a_derived_voucher_that_widens_anything_is_refused(change, reason):
    w, _, _, _, holder, auth, token = setup()
    with pytest.raises(BrokerError) as info:
        narrow(token, holder, change.get("amount", 100), auth["expire_ms"] + change.get("exp", 0),
               change.get("scope", {"model": "m"}))
    assert info.value.reason == reason
    # A forger who builds the block by hand fails at the worker just the same.
    block = {"vid": "vch_forged", "amt": change.get("amount", 100),
             "exp": auth["expire_ms"] + change.get("exp", 0), "scope": change.get(
                 "scope", {"model": "m"})}
    forged = _sign_block(token, holder, block)
    with pytest.raises(BrokerError) as info:
        vouchers.verify(forged, w.verify_keys(), w.now)
    assert info.value.reason == reason


def _sign_block(token: str, key: SigningKey, block: dict) -> str:
    from common.canonical import canonical
    block_b64 = vouchers.b64e(canonical(block))
    message = f"v1d.{token.rsplit('.', 1)[1]}.{block_b64}".encode()
    return f"{token}~{block_b64}.{vouchers.b64e(key.sign(message).signature)}"


def test_a_wrong_key_or_a_broken_chain_is_refused():
    w, _, _, _, holder, auth, token = setup()
    stranger = SigningKey.generate()
    block = {"vid": "vch_x", "amt": 10, "exp": auth["expire_ms"], "scope": {"model": "m"}}
    for bad in (_sign_block(token, stranger, block),  # re-signed with a wrong key
                _sign_block(token, holder, block).replace("~", "~A", 1),  # altered block
                _sign_block(token, holder, block) + "~" +  # next block, no next key named
                _sign_block(_sign_block(token, holder, block), holder, {
                    **block, "vid": "vch_y"}).rsplit("~", 1)[1]):
        with pytest.raises(BrokerError) as info:
            vouchers.verify(bad, w.verify_keys(), w.now)
        assert info.value.reason == "VOUCHER_CHAIN_BROKEN"
    # A block spliced onto another voucher of the same holder does not verify either.
    other = w.run(lambda tx: authorizations.authorize(
        tx, agent_of({"key_id": "k", "wallet": {"wallet_id": auth["wallet_id"]}},
                     auth["owner_id"]), 100, {"model": "m"}, 60, w.now, w.config,
        w.signer.key_id, holder_key=bytes(holder.verify_key)))
    other_token = authorizations.voucher_token(other, w.signer)
    spliced = other_token + "~" + _sign_block(token, holder, block).split("~", 1)[1]
    with pytest.raises(BrokerError) as info:
        vouchers.verify(spliced, w.verify_keys(), w.now)
    assert info.value.reason == "VOUCHER_CHAIN_BROKEN"
    # A voucher authorized without a holder key cannot be narrowed.
    plain = authorizations.voucher_token({**auth, "holder_key": ""}, w.signer)
    with pytest.raises(BrokerError) as info:
        narrow(plain, holder, 10, auth["expire_ms"])
    assert info.value.reason == "VOUCHER_CHAIN_BROKEN"


@pytest.mark.parametrize("in_sub_budget", [False, True])
def test_single_use_across_the_family(in_sub_budget):
    w, agent, worker_p, worker, holder, auth, token = setup(10_000, sub_budget=in_sub_budget)
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    a = narrow(token, holder, 6_000, auth["expire_ms"], nk=narrowing.public_key_text(k1))
    b = narrow(token, holder, 3_000, auth["expire_ms"], nk=narrowing.public_key_text(k2))
    a1 = narrow(a, k1, 4_000, auth["expire_ms"])
    a2 = narrow(a, k1, 4_000, auth["expire_ms"])
    ses_a1 = redeem(w, worker_p, worker, a1)
    assert ses_a1["budget"] == 4_000
    for again, reason in ((a1, "VOUCHER_ALREADY_REDEEMED"),  # replayed
                          (a2, "VOUCHER_FAMILY_EXHAUSTED"),  # 4,000 + 4,000 > a's 6,000
                          (a, "VOUCHER_FAMILY_EXHAUSTED")):  # a's own 6,000 no longer fits
        before = w.store.snapshot()
        with pytest.raises(BrokerError) as info:
            redeem(w, worker_p, worker, again)
        assert info.value.reason == reason
        assert w.store.snapshot() == before
    ses_b = redeem(w, worker_p, worker, b)
    # The original has 10,000 - 4,000 - 3,000 left: its own redemption gets that budget.
    ses_root = redeem(w, worker_p, worker, token)
    assert ses_root["budget"] == 3_000
    receipt = finish(w, worker_p, ses_a1["session_id"], 5_000)
    assert receipt["charged"] == 4_000  # capped at the derived voucher's amount
    finish(w, worker_p, ses_b["session_id"], 100)
    finish(w, worker_p, ses_root["session_id"], 100)
    assert w.violations() == []
    root_wallet = w.read(lambda tx: tx.get("sub_budgets", auth["wallet_id"]))
    if in_sub_budget:
        assert root_wallet["spent"] == 4_200 and root_wallet["held"] == 0


def test_a_derived_voucher_after_the_original_was_redeemed_is_refused():
    w, _, worker_p, worker, holder, auth, token = setup()
    derived = narrow(token, holder, 100, auth["expire_ms"])
    redeem(w, worker_p, worker, token)
    with pytest.raises(BrokerError) as info:
        redeem(w, worker_p, worker, derived)
    assert info.value.reason == "VOUCHER_ALREADY_REDEEMED"
