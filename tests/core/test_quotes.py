"""Quotes and automatic selection in the core: estimates from measured history, ranking,
locked prices, binding an authorization, and the voucher's set of workers."""

import pytest

from broker.core import (
    authorizations,
    grants,
    job_history,
    metering,
    pricing,
    quotes,
    registry,
    selection,
)
from common import vouchers
from common.errors import BrokerError
from common.money import charge_for

from .world import World

CHEAP = {"gpu_second_price": 1000, "input_tokens_1k_price": 200,
         "output_tokens_1k_price": 600, "call_price": 50}
DEAR = {**CHEAP, "gpu_second_price": 3000}
GENERATE = {"kind": "generate", "models": ["big", "small"], "input_tokens": 10,
            "output_tokens": 40}


def sample(duration_ms, gpu_ms, tokens_in=10, tokens_out=40):
    return {"duration_ms": duration_ms, "gpu_ms": gpu_ms, "input_tokens": tokens_in,
            "output_tokens": tokens_out}


def test_nearest_rank_percentiles():
    values = list(range(1, 21))  # 1..20
    assert selection.nearest_rank(values, 50) == 10
    assert selection.nearest_rank(values, 95) == 19
    assert selection.nearest_rank(values, 100) == 20
    assert selection.nearest_rank([7], 95) == 7


def test_gpu_time_is_scaled_from_history_per_token_and_rounded_up():
    job = {**GENERATE, "gpu_ms": 0, "input_tokens": 10, "output_tokens": 40}  # 50 tokens
    history = [sample(100, 100, 5, 20), sample(90, 51, 10, 40), sample(80, 10, 1, 0)]
    # scaled: 100 * 50/25 = 200; 51 * 50/50 = 51; 10 * 50/1 = 500
    assert selection.gpu_ms_estimates(job, history) == (51, 200, 500)
    assert selection.gpu_ms_estimates(job, [sample(1, 1, 3, 0)]) == (17, 17, 17)  # ceil(50/3)
    assert selection.gpu_ms_estimates(job, []) == (0, 0, 0)
    assert selection.gpu_ms_estimates({**job, "gpu_ms": 1234}, history) == (1234, 1234, 1234)


def test_costs_follow_the_money_rule_at_each_estimate():
    job = {**GENERATE, "gpu_ms": 0}
    history = [sample(100, 100), sample(90, 200), sample(95, 300)]
    cost = selection.cost_estimate(job, CHEAP, history)
    usage = {"input_tokens": 10, "output_tokens": 40, "calls": 1}
    assert cost == {"low": charge_for({**usage, "gpu_ms": 100}, CHEAP),
                    "expected": charge_for({**usage, "gpu_ms": 200}, CHEAP),
                    "high": charge_for({**usage, "gpu_ms": 300}, CHEAP)}
    # 100 ms at 1000/s = 100; tokens 10*200 + 40*600 = 26000/1000 = 26; + 50 per call.
    assert cost["low"] == 100 + 26 + 50


def offer(worker_id, model, params, expected, p95=None, eligible=True):
    return {"worker_id": worker_id, "model": model, "model_parameters": params,
            "cost": {"expected": expected},
            "latency": {"p50_ms": p95 or 0, "p95_ms": p95 or 0, "samples": int(bool(p95))},
            "eligible": eligible}


def test_ranking_smallest_acceptable_model_then_cheapest_then_preference():
    job = {"models": ["big", "small"]}
    offers = [offer("w1", "big", 1_000_000, 10, 5), offer("w2", "small", 1_000, 30, 5),
              offer("w3", "small", 1_000, 20, 5), offer("w4", "tiny", 10, 1, 5, eligible=False),
              offer("w5", "other", 0, 1, 5)]
    ranked = [(o["worker_id"], o["rank"]) for o in selection.rank(job, offers)]
    # small beats big though dearer; unknown size after known; ineligible last.
    assert ranked == [("w3", 1), ("w2", 2), ("w1", 3), ("w5", 4), ("w4", 5)]


class Market:
    """Two workers, one serving a big and a small model, with history."""

    def __init__(self):
        self.w = World()
        self.owner, self.wallet, self.agent, self.owner_p = self.w.tenant()
        _, self.worker_p = self.w.provider()
        self.cheap = self.register(CHEAP, ["big", "small"], {"big": 900_000, "small": 9_000})
        self.dear = self.register(DEAR, ["big"], {"big": 900_000})
        self.live = {self.cheap, self.dear}

    def register(self, prices, models, sizes, worker_id=""):
        return self.w.run(lambda tx: registry.register(
            tx, self.worker_p, worker_id, "127.0.0.1:1",
            {"resource_class": "cpu", "models": models, "model_sizes": list(sizes.items())},
            prices, self.w.now))["worker_id"]

    def history(self, worker_id, model, *samples):
        def op(tx):
            for i, s in enumerate(samples):
                tx.put("job_history", f"{job_history._prefix(worker_id, model)}{i:020d}", s)
        self.w.run(op)

    def quote(self, job=GENERATE, lock_seconds=60, principal=None, leased=()):
        return self.w.run(lambda tx: quotes.create(tx, principal or self.agent, job,
                                                   lock_seconds, self.live, leased, self.w.now))

    def authorize(self, quote_id, *, best=False, amount=10_000, **scope):
        return self.w.run(lambda tx: pricing.with_quote(
            tx, self.agent, quote_id, best, authorizations.check_scope(scope), self.live,
            self.w.now, lambda s: authorizations.authorize(
                tx, self.agent, amount, s, 60, self.w.now, self.w.config,
                self.w.signer.key_id)))

    def redeem(self, auth, worker_id, model):
        claims = vouchers.verify(authorizations.voucher_token(auth, self.w.signer),
                                 self.w.verify_keys(), self.w.now)
        return self.w.run(lambda tx: metering.redeem(
            tx, self.worker_p, claims, worker_id, "cpu", model, self.w.now, self.w.config))


def test_a_quote_ranks_live_offers_with_estimates_and_locks_prices():
    m = Market()
    m.history(m.cheap, "small", sample(40, 50), sample(60, 70))
    m.history(m.cheap, "big", sample(400, 500))
    m.history(m.dear, "big", sample(300, 400))
    q = m.quote({**GENERATE, "latency_target_ms": 500})
    assert q["expire_ms"] == m.w.now + 60_000
    got = [(o["rank"], o["worker_id"], o["model"], o["eligible"]) for o in q["offers"]]
    assert got == [(1, m.cheap, "small", True), (2, m.cheap, "big", True),
                   (3, m.dear, "big", True)]
    small = q["offers"][0]
    assert small["latency"] == {"p50_ms": 40, "p95_ms": 60, "samples": 2}
    assert small["model_parameters"] == 9_000 and small["prices"]["gpu_second_price"] == 1000
    # A target the big model misses leaves it ineligible; no history: never eligible.
    q = m.quote({**GENERATE, "latency_target_ms": 350})
    assert [(o["worker_id"], o["model"], o["eligible"]) for o in q["offers"]] == [
        (m.cheap, "small", True), (m.dear, "big", True), (m.cheap, "big", False)]
    m.w.run(lambda tx: tx.delete("job_history",
                                 f"{job_history._prefix(m.cheap, 'small')}{0:020d}"))
    q = m.quote({**GENERATE, "models": ["big"], "max_cost": 1}, lock_seconds=5)
    assert not any(o["within_max_cost"] for o in q["offers"])
    assert q["expire_ms"] == m.w.now + 5_000


@pytest.mark.parametrize("job,reason", [
    ({"kind": "train", "models": []}, "UNKNOWN_JOB_KIND"),
    ({"kind": "", "models": []}, "UNKNOWN_JOB_KIND"),
    ({"kind": "generate", "models": ["nope"]}, "MODEL_NOT_FOUND"),
    ({"kind": "generate", "models": []}, "INVALID_ARGUMENT"),
    ({"kind": "generate", "models": ["big", "big"]}, "INVALID_ARGUMENT"),
    ({"kind": "burn", "models": []}, "INVALID_ARGUMENT"),  # no gpu_ms
    ({"kind": "burn", "models": ["big"], "gpu_ms": 5}, "INVALID_ARGUMENT"),
    ({"kind": "generate", "models": ["big"], "output_tokens": -1}, "INVALID_ARGUMENT"),
])
def test_bad_quotes_are_refused_and_change_nothing(job, reason):
    m = Market()
    before = m.w.store.snapshot()
    with pytest.raises(BrokerError) as err:
        m.quote(job)
    assert err.value.reason == reason
    assert m.w.store.snapshot() == before


def test_select_best_offer_binds_the_voucher_to_the_offers_of_the_chosen_model():
    m = Market()
    m.history(m.cheap, "big", sample(100, 100))
    m.history(m.dear, "big", sample(100, 100))
    q = m.quote({**GENERATE, "models": ["big"]})
    auth = m.authorize(q["quote_id"], best=True)
    assert auth["scope"]["worker_ids"] == [m.cheap, m.dear]  # best first: failover order
    assert auth["scope"]["model"] == "big" and auth["scope"]["worker_id"] == ""
    assert [o["worker_id"] for o in auth["binding"]["offers"]] == [m.cheap, m.dear]
    # A worker outside the set cannot redeem it.
    other = m.register(CHEAP, ["big"], {})
    with pytest.raises(BrokerError) as err:
        m.redeem(auth, other, "big")
    assert err.value.reason == "VOUCHER_SCOPE_MISMATCH"
    # The chosen worker raised its prices since the quote: the voucher keeps the quoted ones.
    m.register({**CHEAP, "gpu_second_price": 9999}, ["big", "small"], {}, worker_id=m.cheap)
    ses = m.redeem(auth, m.cheap, "big")
    assert ses["prices"] == CHEAP and ses["model"] == "big"
    assert m.w.violations() == [] and m.w.read(grants.check) == []


def test_failover_order_skips_offers_that_are_no_longer_live():
    m = Market()
    q = m.quote({"kind": "generate", "models": ["big"]})
    m.live = {m.dear}
    auth = m.authorize(q["quote_id"], best=True)
    assert auth["scope"]["worker_ids"] == [m.dear]
    m.live = set()
    with pytest.raises(BrokerError) as err:
        m.authorize(q["quote_id"], best=True)
    assert err.value.reason == "NO_ELIGIBLE_OFFER"


def test_an_expired_quote_is_refused_and_a_pinned_offer_must_be_in_it():
    m = Market()
    q = m.quote({"kind": "generate", "models": ["small"]}, lock_seconds=10)
    with pytest.raises(BrokerError) as err:
        m.authorize(q["quote_id"], worker_id=m.dear)
    assert err.value.reason == "OFFER_NOT_IN_QUOTE"
    auth = m.authorize(q["quote_id"], worker_id=m.cheap)  # pinned, no set
    assert auth["scope"]["worker_ids"] == [] and auth["scope"]["model"] == "small"
    m.w.now += 10_000
    before = m.w.store.snapshot()
    for kwargs in ({"worker_id": m.cheap}, {"best": True}):
        with pytest.raises(BrokerError) as err:
            m.authorize(q["quote_id"], **kwargs)
        assert (err.value.code.value, err.value.reason) == ("FAILED_PRECONDITION",
                                                            "QUOTE_EXPIRED")
    with pytest.raises(BrokerError) as err:
        m.authorize("quo_nope", best=True)
    assert err.value.reason == "QUOTE_NOT_FOUND"
    with pytest.raises(BrokerError) as err:
        m.authorize("", best=True)
    assert err.value.reason == "INVALID_ARGUMENT"
    assert m.w.store.snapshot() == before
    # Another tenant cannot see or use the quote.
    _, _, other_agent, _ = m.w.tenant()
    with pytest.raises(BrokerError) as err:
        m.w.read(lambda tx: quotes.get(tx, other_agent, q["quote_id"]))
    assert err.value.reason == "QUOTE_NOT_FOUND"


def test_quotes_are_pruned_an_hour_after_they_expire():
    m = Market()
    q = m.quote(lock_seconds=60)
    m.w.now += 60_000 + quotes.KEEP_AFTER_EXPIRY_MS - 1
    assert m.w.run(lambda tx: quotes.prune(tx, m.w.now)) == 0
    m.w.now += 1
    assert m.w.run(lambda tx: quotes.prune(tx, m.w.now)) == 1
    assert m.w.read(lambda tx: tx.get("quotes", q["quote_id"])) is None


def test_finished_jobs_leave_history_that_quotes_use():
    m = Market()
    auth = m.w.run(lambda tx: authorizations.authorize(
        tx, m.agent, 5_000, {}, 60, m.w.now, m.w.config, m.w.signer.key_id))
    ses = m.redeem(auth, m.cheap, "small")
    m.w.now += 250
    usage = {"gpu_ms": 120, "input_tokens": 10, "output_tokens": 40, "calls": 1}
    m.w.run(lambda tx: metering.finish(tx, m.worker_p, ses["session_id"], usage, m.w.now,
                                       m.w.config, m.w.signer))
    (row,) = m.w.read(lambda tx: job_history.samples(tx, m.cheap, "small"))
    assert (row["duration_ms"], row["gpu_ms"]) == (250, 120)
    q = m.quote({**GENERATE, "models": ["small"]})
    assert q["offers"][0]["latency"] == {"p50_ms": 250, "p95_ms": 250, "samples": 1}
    assert m.w.read(lambda tx: job_history.samples(tx, m.cheap, "big")) == []
