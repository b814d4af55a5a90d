import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import BrokerError
from common.money import MAX_AMOUNT, charge_for, check_amount, prices_within, split_fee

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 3, "output_tokens_1k_price": 7,
          "call_price": 5}


def test_charge_rounds_up_once_on_the_sum():
    # 1 ms at 1000/s is exactly 1; 1 input token at 3/1k is 0.003 -> the sum rounds up once.
    assert charge_for({"gpu_ms": 1}, PRICES) == 1
    assert charge_for({"input_tokens": 1}, PRICES) == 1
    assert charge_for({"gpu_ms": 1, "input_tokens": 1}, PRICES) == 2  # 1.003 -> 2
    assert charge_for({"input_tokens": 333, "output_tokens": 1}, PRICES) == 2  # 1.006 -> 2
    assert charge_for({"input_tokens": 1000}, PRICES) == 3  # exact, no rounding
    assert charge_for({}, PRICES) == 0
    assert charge_for({"calls": 3}, PRICES) == 15


def test_energy_is_recorded_not_priced():
    assert charge_for({"energy_mj": 10**9}, PRICES) == 0


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**6))
def test_charge_is_monotonic_and_bounded_by_exact_plus_one(gpu_ms, tin, tout, calls):
    usage = {"gpu_ms": gpu_ms, "input_tokens": tin, "output_tokens": tout, "calls": calls}
    exact_thousandths = gpu_ms * 1000 + tin * 3 + tout * 7
    charge = charge_for(usage, PRICES)
    assert isinstance(charge, int)
    assert exact_thousandths <= (charge - calls * 5) * 1000 < exact_thousandths + 1000
    assert charge_for({**usage, "gpu_ms": gpu_ms + 1}, PRICES) >= charge


@given(st.integers(0, MAX_AMOUNT), st.integers(0, 10_000))
def test_fee_split_adds_up_and_floors_the_fee(charged, bps):
    payout, fee = split_fee(charged, bps)
    assert payout + fee == charged
    assert fee == charged * bps // 10_000
    assert payout >= 0 and fee >= 0


def test_fee_edges():
    assert split_fee(0, 250) == (0, 0)
    assert split_fee(39, 250) == (39, 0)  # 0.975 floors to 0
    assert split_fee(40, 250) == (39, 1)


@pytest.mark.parametrize("bad", [0, -1, MAX_AMOUNT + 1, 1.5, True, "5"])
def test_check_amount_rejects(bad):
    with pytest.raises(BrokerError) as err:
        check_amount(bad, "amount")
    assert err.value.code.value == "INVALID_ARGUMENT"


def test_check_amount_accepts_edges():
    assert check_amount(1, "amount") == 1
    assert check_amount(MAX_AMOUNT, "amount") == MAX_AMOUNT
    assert check_amount(0, "x", allow_zero=True) == 0


def test_prices_within_ignores_zero_caps():
    assert prices_within(PRICES, {}) == []
    assert prices_within(PRICES, {"gpu_second_price": 999}) == ["gpu_second_price"]
    assert prices_within(PRICES, {"gpu_second_price": 1000, "call_price": 0}) == []
