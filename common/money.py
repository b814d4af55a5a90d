"""Integer money. Amounts are micro-credits; every rounding rule lives here.

Rules (tested at their edges in tests/core/test_money.py):
- charge: one rounding step per session, upwards, on the cumulative usage:
  ceil((gpu_ms * gpu_second_price + input_tokens * input_tokens_1k_price
        + output_tokens * output_tokens_1k_price) / 1000) + calls * call_price.
  Computing from cumulative counters means rounding never accumulates across reports.
- platform fee: floor(charged * fee_bps / 10000); the worker gets the rest, so
  payout + fee == charged exactly.
- lease (reserved capacity), one rounding step, upwards, on the whole lease:
  ceil((used_ms * 10000 + unused_ms * unused_reserved_bps) * reserved_hour_price
       / (3_600_000 * 10_000)), where used_ms is the GPU time of the lease's jobs
  (at most the lease) and unused_ms the rest of the lease. With no use and 10000 bps
  this is the whole lease, ceil(lease_ms * reserved_hour_price / 3_600_000): its hold.
The one rule behind all of them: exact integer arithmetic on cumulative quantities,
one rounding per charge, upwards (fees: downwards). docs/pricing.md.
"""

from __future__ import annotations

from .errors import invalid

# Amounts fit a signed 64-bit integer (proto int64) with room for sums.
MAX_AMOUNT = 2**62
# Any single price; with MAX_COUNTER usage a charge still fits in Python ints, and
# in int64 once capped at the hold.
MAX_PRICE = MAX_AMOUNT // 10**6
PRICE_FIELDS = ("gpu_second_price", "input_tokens_1k_price", "output_tokens_1k_price",
                "call_price")
# Reserved capacity terms on a price sheet: a price per hour of lease, and how much of
# it unused reserved time costs (basis points).
LEASE_FIELDS = ("reserved_hour_price", "unused_reserved_bps")
SHEET_FIELDS = PRICE_FIELDS + LEASE_FIELDS
MAX_BPS = 10_000
HOUR_MS = 3_600_000
USAGE_FIELDS = ("gpu_ms", "input_tokens", "output_tokens", "calls", "energy_mj")
# A single usage counter above this is nonsense (about 3 million GPU-years in ms).
MAX_COUNTER = 10**17


def check_amount(value: int, field_path: str, *, allow_zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(field_path, "must be an integer number of micro-credits")
    if value < 0 or (value == 0 and not allow_zero):
        raise invalid(field_path, "must be greater than zero" if not allow_zero
                      else "must not be negative", "INVALID_AMOUNT")
    if value > MAX_AMOUNT:
        raise invalid(field_path, f"must be at most {MAX_AMOUNT}", "INVALID_AMOUNT")
    return value


def _check_price(value: int, field_path: str) -> int:
    if value < 0 or value > MAX_PRICE:
        raise invalid(field_path, "must be between 0 and 4.6e12", "INVALID_PRICE")
    return value


def check_prices(prices: dict[str, int], field_path: str) -> dict[str, int]:
    return {name: _check_price(prices.get(name, 0), f"{field_path}.{name}")
            for name in PRICE_FIELDS}


def check_price_sheet(prices: dict[str, int], field_path: str) -> dict[str, int]:
    """A worker's whole price sheet: usage prices plus lease terms."""
    bps = prices.get("unused_reserved_bps", 0)
    if not 0 <= bps <= MAX_BPS:
        raise invalid(f"{field_path}.unused_reserved_bps", f"must be between 0 and {MAX_BPS}",
                      "INVALID_PRICE")
    return {**check_prices(prices, field_path),
            "reserved_hour_price": _check_price(prices.get("reserved_hour_price", 0),
                                                f"{field_path}.reserved_hour_price"),
            "unused_reserved_bps": bps}


def check_usage(usage: dict[str, int], field_path: str) -> dict[str, int]:
    out = {}
    for name in USAGE_FIELDS:
        value = usage.get(name, 0)
        if value < 0 or value > MAX_COUNTER:
            raise invalid(f"{field_path}.{name}", f"must be between 0 and {MAX_COUNTER}",
                          "INVALID_USAGE")
        out[name] = value
    return out


def charge_for(usage: dict[str, int], prices: dict[str, int]) -> int:
    """Exact charge for cumulative usage at the given prices (see module rule)."""
    per_thousand = (usage.get("gpu_ms", 0) * prices.get("gpu_second_price", 0)
                    + usage.get("input_tokens", 0) * prices.get("input_tokens_1k_price", 0)
                    + usage.get("output_tokens", 0) * prices.get("output_tokens_1k_price", 0))
    return -(-per_thousand // 1000) + usage.get("calls", 0) * prices.get("call_price", 0)


def split_fee(charged: int, fee_bps: int) -> tuple[int, int]:
    """(worker payout, platform fee) for a charge; they always add up to it."""
    fee = charged * fee_bps // 10_000
    return charged - fee, fee


def prices_within(prices: dict[str, int], caps: dict[str, int]) -> list[str]:
    """Names of the prices above their cap (a cap of 0 means no cap)."""
    return [n for n in PRICE_FIELDS if caps.get(n, 0) and prices.get(n, 0) > caps[n]]


def lease_charge(lease_ms: int, used_ms: int, reserved_hour_price: int,
                 unused_reserved_bps: int) -> int:
    """Exact charge for a lease of `lease_ms` whose jobs used `used_ms` (see module rule)."""
    used = min(max(used_ms, 0), lease_ms)
    numerator = (used * MAX_BPS + (lease_ms - used) * unused_reserved_bps) * reserved_hour_price
    return -(-numerator // (HOUR_MS * MAX_BPS))
