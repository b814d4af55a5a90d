"""The failed-authentication throttle (issue 18 item 10): per address, only failures,
a bounded table; and how a call's peer becomes an address."""

from __future__ import annotations

from broker.api.base import peer_address
from broker.core.auth_throttle import FailedAuthThrottle
from common.errors import BrokerError, Code

INVALID = BrokerError(Code.UNAUTHENTICATED, "API_KEY_INVALID", "the API key is not valid")


def test_an_address_gets_its_burst_then_one_failure_per_refill():
    throttle = FailedAuthThrottle(per_minute=60, burst=3)
    answers = [throttle.failed("10.0.0.1", INVALID, 1_000).reason for _ in range(5)]
    assert answers == ["API_KEY_INVALID"] * 3 + ["AUTH_THROTTLED"] * 2
    throttled = throttle.failed("10.0.0.1", INVALID, 1_000)
    assert throttled.code == Code.RESOURCE_EXHAUSTED and throttled.retry_after_ms == 1_000
    # Another address is untouched; and a second later the first may fail once more.
    assert throttle.failed("10.0.0.2", INVALID, 1_000) is INVALID
    assert throttle.failed("10.0.0.1", INVALID, 2_000) is INVALID
    assert throttle.failed("10.0.0.1", INVALID, 2_000).reason == "AUTH_THROTTLED"


def test_the_table_is_bounded_and_forgets_the_least_recent_address():
    throttle = FailedAuthThrottle(per_minute=60, burst=1, max_peers=100)
    throttle.failed("attacker", INVALID, 0)
    for n in range(1_000):
        throttle.failed(f"10.1.{n // 256}.{n % 256}", INVALID, 0)
        assert len(throttle) <= 100
    assert throttle.failed("attacker", INVALID, 0) is INVALID  # forgotten: a fresh bucket


def test_peer_address_drops_the_port_and_groups_ipv6_by_64():
    assert peer_address("ipv4:127.0.0.1:54321") == "127.0.0.1"
    assert peer_address("ipv6:[2001:db8:1:2:3:4:5:6]:443") == "2001:db8:1:2::/64"
    assert peer_address("ipv6:%5B2001:db8:1:2::9%5D:443") == "2001:db8:1:2::/64"
    assert peer_address("unix:/run/broker.sock") == "unix:/run/broker.sock"
    assert peer_address("") == "unknown"
