import grpc
import pytest

from .broker_process import BrokerProcess


@pytest.fixture
def broker(tmp_path):
    process = BrokerProcess(tmp_path / "data").start()
    yield process
    process.stop()


@pytest.fixture
def channel(broker):
    with grpc.insecure_channel(broker.target) as ch:
        yield ch


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)
