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
