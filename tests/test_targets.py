"""Broker address lists as one gRPC target (common/targets.py)."""

import pytest

from common import targets


def test_one_address_passes_through():
    assert targets.grpc_target("broker.example:50051") == "broker.example:50051"


def test_a_list_becomes_one_target_with_every_address_in_order():
    assert targets.grpc_target("127.0.0.1:50051, 127.0.0.1:50061,127.0.0.1:50071") == \
        "ipv4:127.0.0.1:50051,127.0.0.1:50061,127.0.0.1:50071"
    assert targets.grpc_target("[::1]:50051,[::1]:50061") == "ipv6:[::1]:50051,[::1]:50061"
    assert targets.grpc_target("localhost:1,127.0.0.2:2").endswith(":1,127.0.0.2:2")


@pytest.mark.parametrize("addresses, why", [
    ("127.0.0.1:50051,127.0.0.1", "is not host:port"),
    ("127.0.0.1:50051,:50061", "is not host:port"),
    ("127.0.0.1:50051,[::1]:50061", "mix IPv4 and IPv6"),
    ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve broker host"),
    ("  ", "must not be empty"),
])
def test_bad_lists_are_one_clear_line(addresses, why):
    assert why in targets.check(addresses)


def test_worker_refuses_a_bad_broker_list_in_its_settings():
    from common.settings import SettingsError
    from worker.config import SCHEMA

    with pytest.raises(SettingsError, match="not host:port"):
        SCHEMA.load(flags={"broker": "127.0.0.1:1,oops"})


# -- the broker order: spread (the default) or listed -----------------------------------

SHUFFLE = ("grpc.service_config",
           '{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}]}')


def test_a_list_is_spread_by_default():
    options = targets.broker_channel_options("127.0.0.1:1,127.0.0.1:2")
    assert SHUFFLE in options
    # The keepalive pings stay, and an option given on top comes last (it wins in gRPC).
    assert options[:len(targets.BROKER_CHANNEL_OPTIONS)] == list(targets.BROKER_CHANNEL_OPTIONS)
    on_top = targets.broker_channel_options("127.0.0.1:1,127.0.0.1:2", "spread",
                                            [("grpc.max_reconnect_backoff_ms", 2000)])
    assert on_top[-1] == ("grpc.max_reconnect_backoff_ms", 2000) and SHUFFLE in on_top


def test_one_address_gets_no_service_config():
    for order in targets.BROKER_ORDERS:
        options = targets.broker_channel_options("broker.example:50051", order)
        assert options == list(targets.BROKER_CHANNEL_OPTIONS)
        assert not any(name == "grpc.service_config" for name, _ in options)


def test_listed_keeps_the_order():
    addresses = "127.0.0.1:3,127.0.0.1:1,127.0.0.1:2"
    assert targets.broker_channel_options(addresses, "listed") == \
        list(targets.BROKER_CHANNEL_OPTIONS)
    assert targets.grpc_target(addresses) == "ipv4:127.0.0.1:3,127.0.0.1:1,127.0.0.1:2"


@pytest.mark.parametrize("order", ["random", "", "Spread", "first"])
def test_a_bad_order_is_one_clear_line(order):
    with pytest.raises(ValueError, match=r"^broker order .* is not one of spread, listed$"):
        targets.broker_channel_options("127.0.0.1:1,127.0.0.1:2", order)
    with pytest.raises(ValueError, match="is not one of spread, listed"):
        targets.broker_channel_options("127.0.0.1:1", order)  # one address: still refused


def test_broker_client_refuses_a_bad_order():
    from broker.client import BrokerClient

    with pytest.raises(ValueError, match="broker order 'nearest' is not one of"):
        BrokerClient("127.0.0.1:1,127.0.0.1:2", "key", broker_order="nearest")


def test_worker_takes_the_order_from_settings_and_refuses_others():
    from common.settings import SettingsError
    from worker.config import SCHEMA

    assert SCHEMA.load().settings.broker_order == "spread"
    assert SCHEMA.load(env={"WORKER_BROKER_ORDER": "listed"}).settings.broker_order == "listed"
    with pytest.raises(SettingsError, match="expected one of spread, listed"):
        SCHEMA.load(flags={"broker_order": "nearest"})


def test_console_takes_the_order_and_a_checked_list_from_settings():
    from broker.console.settings import SCHEMA
    from common.settings import SettingsError

    env = {"BROKER_CONSOLE_BROKER": "127.0.0.1:1,127.0.0.1:2",
           "BROKER_CONSOLE_BROKER_ORDER": "listed"}
    assert SCHEMA.load(env=env).settings.broker_order == "listed"
    with pytest.raises(SettingsError, match="expected one of spread, listed"):
        SCHEMA.load(flags={"broker_order": "nearest"})
    with pytest.raises(SettingsError, match="not host:port"):
        SCHEMA.load(flags={"broker": "127.0.0.1:1,oops"})
