import pytest

from broker.core import session
from common.errors import BrokerError

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0, "output_tokens_1k_price": 0,
          "call_price": 0}
T0 = 10_000


def fresh(budget=5_000, interval=1000, expire=T0 + 600_000):
    auth = {"authorization_id": "a", "amount": budget, "expire_ms": expire}
    worker = {"worker_id": "w", "provider_id": "p", "prices": PRICES}
    return session.new_session("s", auth, "v", worker, T0, interval)


def u(gpu_ms):
    return {"gpu_ms": gpu_ms}


def err(fn):
    with pytest.raises(BrokerError) as e:
        fn()
    return e.value.reason


def test_ack_charges_cumulative_usage():
    d = session.on_usage(fresh(), 1, u(1000), T0 + 1000)
    assert (d.charged, d.remaining, d.stop_reason) == (1000, 4000, "")


def test_stop_one_interval_before_the_budget_runs_out():
    s = fresh(budget=5_000)
    charges = []
    for seq in range(1, 10):
        d = session.on_usage(s, seq, u(seq * 1000), T0 + seq * 1000)
        s = d.session
        charges.append(d.charged)
        if d.stop_reason:
            break
    # At 4000 charged, one more second (1000) would reach 5000: stop is sent at 4000.
    assert d.stop_reason == session.BUDGET_EXHAUSTED and d.charged == 4000
    assert all(c <= 5_000 for c in charges)


def test_fast_rate_triggers_stop_early():
    s = fresh(budget=10_000)
    # 3000 charged in 1 s of GPU time... reported over 1 s: projected 3000 more would fit (6000);
    d = session.on_usage(s, 1, u(3000), T0 + 1000)
    assert d.stop_reason == ""
    # ... then 4000 more in 1 s: 7000 + 4000 > 10000 -> stop.
    d = session.on_usage(d.session, 2, u(7000), T0 + 2000)
    assert d.stop_reason == session.BUDGET_EXHAUSTED


def test_charge_never_exceeds_the_budget():
    d = session.on_usage(fresh(budget=500), 1, u(10**9), T0 + 10)
    assert d.charged == 500 and d.remaining == 0 and d.stop_reason == session.BUDGET_EXHAUSTED


def test_hold_expiring_stops():
    d = session.on_usage(fresh(expire=T0 + 1500), 1, u(1), T0 + 600)
    assert d.stop_reason == session.HOLD_EXPIRING


def test_usage_backwards_out_of_order_and_after_stop_are_refused():
    s = session.on_usage(fresh(), 1, {"gpu_ms": 100, "calls": 2}, T0 + 100).session
    assert err(lambda: session.on_usage(s, 2, {"gpu_ms": 200, "calls": 1}, T0 + 200)) \
        == "USAGE_NOT_MONOTONIC"
    assert err(lambda: session.on_usage(s, 3, u(200), T0 + 200)) == "USAGE_OUT_OF_ORDER"
    assert err(lambda: session.on_usage(s, 2, {"gpu_ms": -1}, T0 + 200)) == "INVALID_USAGE"
    stopped = session.on_usage(s, 2, {"gpu_ms": 4900, "calls": 2}, T0 + 200).session
    assert stopped["stop_reason"]
    assert err(lambda: session.on_usage(stopped, 3, {"gpu_ms": 4950, "calls": 2}, T0 + 300)) \
        == "USAGE_AFTER_STOP"


def test_retransmitted_report_gets_the_same_answer():
    d1 = session.on_usage(fresh(), 1, u(100), T0 + 100)
    d2 = session.on_usage(d1.session, 1, u(100), T0 + 900)
    assert d2.session is d1.session and d2.charged == d1.charged


def test_finish_must_not_go_backwards_and_is_capped():
    s = session.on_usage(fresh(budget=3000), 1, u(1000), T0 + 1000).session
    assert err(lambda: session.on_finish(s, u(999))) == "USAGE_NOT_MONOTONIC"
    assert session.on_finish(s, u(10**6))["charged"] == 3000


# -- clock steps (issue 18, item 3) ------------------------------------------------------


def steady(s, seq: int, now: int, elapsed_ms=None):
    """A session that uses 1 s of GPU per second: report `seq` at wall time `now`."""
    return session.on_usage(s, seq, u(seq * 1000), now, elapsed_ms)


def test_a_wall_clock_step_back_does_not_stop_a_steady_session():
    s = steady(fresh(budget=100_000), 1, T0 + 1000).session
    # The wall clock steps back 120 s between two reports, 1 s apart.
    d = steady(s, 2, T0 + 2000 - 120_000)
    assert (d.stop_reason, d.charged) == ("", 2000)
    d = steady(d.session, 3, T0 + 3000 - 120_000)  # and the next report is judged as ever
    assert (d.stop_reason, d.charged) == ("", 3000)
    # Measured on a monotonic clock (the stream's), the step is not seen at all.
    d = steady(s, 2, T0 + 2000 - 120_000, elapsed_ms=1000)
    assert (d.stop_reason, d.charged) == ("", 2000)


def test_the_rate_projection_survives_a_step_either_way_on_a_monotonic_clock():
    """3000 then 4000 more in 1 s each stops (test_fast_rate_triggers_stop_early),
    whether the wall clock stepped back or forward between the reports."""
    for step in (-120_000, 120_000):
        d = session.on_usage(fresh(budget=10_000), 1, u(3000), T0 + 1000, 1000)
        d = session.on_usage(d.session, 2, u(7000), T0 + 2000 + step, 1000)
        assert d.stop_reason == session.BUDGET_EXHAUSTED, step


def test_a_step_forward_past_the_hold_ends_the_session_on_acknowledged_usage():
    """Holds expire on the wall clock: a step past the expiry refuses further usage
    (the session settles on what was acknowledged), one close to it stops the job."""
    s = steady(fresh(budget=100_000, expire=T0 + 60_000), 1, T0 + 1000).session
    assert steady(s, 2, T0 + 2000 + 57_500, 1000).stop_reason == session.HOLD_EXPIRING
    assert err(lambda: steady(s, 2, T0 + 2000 + 120_000, 1000)) == "VOUCHER_EXPIRED"
