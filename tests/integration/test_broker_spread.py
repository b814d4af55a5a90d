"""Clients given a list of brokers spread over them (pick_first shuffles the list per
channel, common/targets.py), and `listed` sends them all to the first: real channels to
three tiny brokers in another process (tiny_brokers.py) that say which one answered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from broker.client import BrokerClient

from .broker_process import ROOT
from .test_node_agent import line, node_agent  # noqa: F401 - the fixture that runs agent.js

CLIENTS = 24  # all on one of three by chance: 3 * (1/3)**24, about 1e-11


@pytest.fixture(scope="module")
def brokers():
    """The three tiny brokers' addresses, first to third (answering 1, 2, 3)."""
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.tiny_brokers", "3"],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith("ports "), f"tiny_brokers said {first!r}"
        yield [f"127.0.0.1:{port}" for port in first.split()[1].split(",")]
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def answers(addresses: str, calls: int = 3, **kwargs) -> list[int]:
    """For each of CLIENTS independent clients, the broker that answered its calls (which
    must be one and the same: a channel keeps to the broker it picked)."""
    picked = []
    for _ in range(CLIENTS):
        with BrokerClient(addresses, "key", **kwargs) as client:
            seen = {client.platform_fee_bps() for _ in range(calls)}
        assert len(seen) == 1, f"one client's calls went to brokers {seen}"
        picked.append(seen.pop())
    return picked


def test_clients_spread_over_the_brokers_by_default(brokers):
    picked = Counter(answers(",".join(brokers)))
    assert set(picked) <= {1, 2, 3}
    assert len(picked) >= 2, f"every client went to broker {set(picked)}"
    # The same by name.
    assert len(Counter(answers(",".join(brokers), calls=1, broker_order="spread"))) >= 2


def test_listed_sends_every_client_to_the_first_in_the_list(brokers):
    assert set(answers(",".join(brokers), broker_order="listed")) == {1}
    # The first in the list, not the lowest port or the first started.
    third_first = ",".join([brokers[2], brokers[0], brokers[1]])
    assert set(answers(third_first, broker_order="listed")) == {3}


def test_one_address_is_that_broker_whatever_the_order(brokers):
    for order in ("spread", "listed"):
        assert set(answers(brokers[1], calls=2, broker_order=order)) == {2}


def test_the_node_agent_spreads_and_keeps_the_listed_order_when_asked(
        brokers, node_agent, tmp_path):  # noqa: F811
    """agent.js stops at "no live worker offers" here; its first call (GetBalance) says
    which broker its one channel picked."""
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"agent_api_key": "key"}))

    def wallet(*order: str) -> str:
        done = node_agent("--broker", ",".join(brokers), "--credentials", str(credentials),
                          *order, "--timeout", "20")
        assert done.returncode == 1 and "no live worker offers tiny-lm" in done.stderr, \
            done.stdout + done.stderr
        return line(r"^wallet (tiny-\d) before: ", done.stdout).group(1)

    # 12 runs all on one of three by chance: 3 * (1/3)**12, about 6e-6.
    assert len({wallet() for _ in range(12)}) >= 2
    assert {wallet("--broker-order", "listed") for _ in range(3)} == {"tiny-1"}


def test_bad_orders_are_refused_in_one_line(node_agent):  # noqa: F811
    done = node_agent("--broker", "127.0.0.1:1", "--broker-order", "nearest")
    assert done.returncode == 2
    assert done.stderr == "node-agent: --broker-order must be spread or listed, not nearest\n"
    mcp = subprocess.run([sys.executable, "-m", "broker.mcp.cli", "--broker-order", "nearest"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert mcp.returncode == 2
    assert mcp.stderr == "broker-mcp: broker order 'nearest' is not one of spread, listed\n"
