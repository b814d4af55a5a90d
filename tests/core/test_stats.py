"""Monitoring figures read from the ledger: pending holds and open sessions now;
settlements, spend and fees from the journal."""

from __future__ import annotations

from broker.core import authorizations, metering, registry, stats
from common import vouchers

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0, "output_tokens_1k_price": 0,
          "call_price": 0}


def test_holds_sessions_and_the_journal_tally():
    w = World()
    _, _, agent, _ = w.tenant(treasury=1_000_000, cap=100_000, refill_target=50_000,
                              funded=50_000)
    _, worker_p = w.provider()
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now))
    tally = stats.Tally(seq=w.read(stats.journal_head))
    assert w.read(stats.holds) == stats.Holds(0, 0, 0)

    auths = [w.run(lambda tx, a=amount: authorizations.authorize(
        tx, agent, a, {}, 60, w.now, w.config, w.signer.key_id))
        for amount in (10_000, 20_000, 5_000)]
    assert w.read(stats.holds) == stats.Holds(3, 35_000, 0)

    token = authorizations.voucher_token(auths[1], w.signer)
    claims = vouchers.verify(token, w.verify_keys(), w.now)
    ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "cpu",
                                           "m", w.now, w.config))
    assert w.read(stats.holds) == stats.Holds(3, 35_000, 1)

    receipt = w.run(lambda tx: metering.finish(tx, worker_p, ses["session_id"],
                                               {"gpu_ms": 4_000}, w.now, w.config, w.signer))
    w.run(lambda tx: authorizations.cancel(tx, agent, auths[2]["authorization_id"], w.now))
    assert w.read(stats.holds) == stats.Holds(1, 10_000, 0)

    # Read in small steps, as a scrape does when much has happened since the last one.
    steps = 0
    while w.read(lambda tx: tally.catch_up(tx, limit=2)):
        steps += 1
    assert steps >= 3
    assert tally.seq == w.read(stats.journal_head)
    assert tally.settlements == {receipt["outcome"]: 1}
    assert (tally.charged, tally.fees, tally.payouts) == (4_000, 100, 3_900)
    assert tally.authorized == 35_000
    assert tally.events["authorized"] == 3 and tally.events["authorization_cancelled"] == 1
    assert tally.events["voucher_redeemed"] == 1 and tally.events["session_settled"] == 1

    # The hold left over times out: released, not settled.
    w.now += 61_000
    w.run(lambda tx: metering.expire_due(tx, w.now, w.config, w.signer))
    assert w.read(stats.holds) == stats.Holds(0, 0, 0)
    w.read(tally.catch_up)
    assert tally.events["authorization_expired"] == 1 and tally.settlements.total() == 1
