"""Anomaly alerts on the core with a controlled clock: synthetic traffic that must alert,
and a quiet control that must not."""

from __future__ import annotations

import pytest

from broker.core import alerts, authorizations, policy

from .world import World

MINUTE = 60_000


@pytest.fixture
def w():
    return World()


def tenant(w):
    return w.tenant(treasury=10**12, cap=10**11, refill_target=0, funded=10**11)


def authorize(w, agent, amount=1000, model="tiny-lm"):
    return w.run(lambda tx: authorizations.authorize(
        tx, agent, amount, {"model": model}, 60, w.now, w.config, w.signer.key_id))


def kinds(w, wallet_id=None):
    found = w.read(lambda tx: [a for _, a in tx.scan("alerts")])
    return [a["kind"] for a in found if wallet_id is None or a["wallet_id"] == wallet_id]


def steady(w, agent, minutes: int, per_minute: int, amount: int = 1000):
    for _ in range(minutes):
        for _ in range(per_minute):
            w.now += MINUTE // (per_minute + 1)
            authorize(w, agent, amount)
        w.now += MINUTE - (MINUTE // (per_minute + 1)) * per_minute


def test_learned_baseline_catches_a_burst_and_spares_the_quiet_control(w):
    _, burst_wallet, burst_agent, owner_p = tenant(w)
    _, quiet_wallet, quiet_agent, quiet_owner = tenant(w)
    for p in (owner_p, quiet_owner):
        w.run(lambda tx, p=p: policy.set_policy(
            tx, p, "", {"alerts": {"burst_factor": 3, "min_authorizations_per_minute": 4,
                                   "min_spend_per_hour": 10**9}}, False, w.now))
    # Two hours of steady traffic, 8 a minute, for both agents: the baseline (weight 1/60
    # per minute) rises to about 8 x (1 - e^-2).
    for _ in range(120):
        steady(w, burst_agent, 1, 8)
        w.now -= MINUTE
        steady(w, quiet_agent, 1, 8)
    base = w.read(lambda tx: tx.get("baselines", burst_wallet["wallet_id"]))
    assert 6_700 <= base["auth_rate_milli"] <= 7_000
    # 18 a minute is below 3 x 6.9: no alert, though it is above the floor's 3 x 4.
    steady(w, burst_agent, 1, 18)
    assert kinds(w) == []
    # 30 in a minute is a burst; the control keeps its pace.
    w.now += MINUTE
    for _ in range(30):
        authorize(w, burst_agent)
        w.now += 100
    steady(w, quiet_agent, 3, 8)
    assert kinds(w, burst_wallet["wallet_id"]) == ["authorization_burst"]  # once per minute
    assert kinds(w, quiet_wallet["wallet_id"]) == []
    alert = w.read(lambda tx: alerts.list_alerts(tx, owner_p, "", 0, ""))["alerts"][0]
    # Raised on the first authorization above 3 x the baseline.
    assert alert["observed"] == 3 * alert["baseline"] + 3 and 6 <= alert["baseline"] <= 7


def test_a_fresh_wallet_bursting_alerts_on_the_floor(w):
    _, wallet, agent, _ = tenant(w)
    for _ in range(60):  # the default floor is 10 a minute, the factor 5: above 50
        authorize(w, agent)
        w.now += 10
    assert kinds(w) == ["authorization_burst"]


def test_spend_burst(w):
    _, wallet, agent, owner_p = tenant(w)
    w.run(lambda tx: policy.set_policy(tx, owner_p, "", {"alerts": {
        "burst_factor": 2, "min_spend_per_hour": 1_000_000}}, False, w.now))
    authorize(w, agent, 1_500_000)
    assert kinds(w) == []
    authorize(w, agent, 600_000)
    assert kinds(w) == ["spend_burst"]


def test_first_use_of_a_model_and_of_a_worker_after_warmup(w):
    _, wallet, agent, _ = tenant(w)
    for _ in range(5):
        authorize(w, agent, model="tiny-lm")
        w.now += 30_000
    authorize(w, agent, model="tiny-lm")
    assert kinds(w) == []
    authorize(w, agent, model="big-lm")
    assert kinds(w) == ["new_model"]
    w.run(lambda tx: alerts.observe_redemption(tx, wallet, "wrk_a", {}, w.now))
    w.run(lambda tx: alerts.observe_redemption(tx, wallet, "wrk_a", {}, w.now))
    assert kinds(w) == ["new_model", "new_worker"]


def test_warmup_keeps_a_new_agent_quiet(w):
    _, _, agent, _ = tenant(w)
    authorize(w, agent, model="a")
    authorize(w, agent, model="b")
    assert kinds(w) == []


def test_denial_run_and_freeze_on_alert(w):
    owner, wallet, agent, owner_p = tenant(w)
    w.run(lambda tx: policy.set_policy(tx, owner_p, "", {
        "max_per_authorization": 10, "alerts": {"denial_run": 3, "freeze_on": ["denial_run"]}},
        False, w.now))
    for _ in range(2):
        w.run(lambda tx: policy.record_denial(tx, agent, "POLICY_AMOUNT_ABOVE_MAX", w.now))
    authorize(w, agent, 5)  # a success ends the run
    for _ in range(3):
        w.run(lambda tx: policy.record_denial(tx, agent, "POLICY_AMOUNT_ABOVE_MAX", w.now))
    found = w.read(lambda tx: [a for _, a in tx.scan("alerts")])
    assert [(a["kind"], a["wallet_frozen"]) for a in found] == [("denial_run", True)]
    assert w.read(lambda tx: tx.get("wallets", wallet["wallet_id"]))["frozen"]


def test_listing_is_per_tenant_and_paginated(w):
    _, wallet, agent, owner_p = tenant(w)
    _, other_wallet, other_agent, other_p = tenant(w)
    for a in (agent, other_agent, agent):  # a run of 5 each; a success ends a run
        for _ in range(7):
            w.run(lambda tx, a=a: policy.record_denial(tx, a, "INSUFFICIENT_FUNDS", w.now))
        authorize(w, a)
    mine = w.read(lambda tx: alerts.list_alerts(tx, owner_p, "", 1, ""))
    assert len(mine["alerts"]) == 1 and mine["next_page_token"]
    rest = w.read(lambda tx: alerts.list_alerts(tx, owner_p, "", 10, mine["next_page_token"]))
    ids = [a["alert_id"] for a in mine["alerts"] + rest["alerts"]]
    assert len(ids) == 2 and ids == sorted(ids, key=lambda i: -int(i[4:]))  # newest first
    assert all(a["wallet_id"] == wallet["wallet_id"] for a in mine["alerts"] + rest["alerts"])
    theirs = w.read(lambda tx: alerts.list_alerts(tx, other_p, "", 10, ""))["alerts"]
    assert [a["wallet_id"] for a in theirs] == [other_wallet["wallet_id"]]
