"""Issue 18 items 8 and 10 against a real broker: metering streams are authenticated on
the call's metadata before their first message, must send it within a deadline and are
capped per worker key and in all; failed authentications are throttled per address,
while valid keys keep working."""

from __future__ import annotations

import asyncio
import secrets
import time

import grpc
import pytest
from google.rpc import error_details_pb2

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import metering_service_pb2_grpc as meter_grpc
from common.status import error_detail

from .broker_process import BrokerProcess
from .conftest import Client, Harness, aio_channel, bearer, check_error, rid, run
from .spend_helpers import wait_until
from .test_metrics import Scrape

Code = grpc.StatusCode

METER = {"grpc_service": "broker.v1.MeteringService", "grpc_method": "Meter"}


@pytest.fixture
def limited(tmp_path):
    broker = BrokerProcess(tmp_path / "broker", extra_args=(
        "--meter-first-message-ms", "4000", "--meter-key-streams", "2",
        "--meter-streams-total", "3")).start()
    channel = grpc.insecure_channel(broker.target)
    try:
        yield Harness(broker, channel)
    finally:
        channel.close()
        broker.stop()


def _worker_key(h: Harness) -> str:
    return h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER, provider_id=h.creds["provider_id"])).api_key


async def _silent_stream(ch, metadata=()):
    """A Meter call that sends nothing: what the broker answers, and how soon."""
    start = time.monotonic()
    call = meter_grpc.MeteringServiceStub(ch).Meter(metadata=metadata)
    try:
        await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as error:
        return error, time.monotonic() - start
    raise AssertionError("the stream answered a message it never got")


def test_streams_without_a_valid_key_are_refused_before_their_first_message(limited):
    h = limited

    async def go():
        async with aio_channel(h.target) as ch:
            return await asyncio.gather(
                *(_silent_stream(ch) for _ in range(100)),
                *(_silent_stream(ch, bearer("cbk_" + secrets.token_urlsafe(32)))
                  for _ in range(5)),
                _silent_stream(ch, bearer(h.creds["agent_api_key"])))

    results = run(go())
    for error, seconds in results[:100]:
        check_error(error, Code.UNAUTHENTICATED, "API_KEY_MISSING")
        assert seconds < 5  # never held open waiting for a message (1 s grace at most)
    for error, _ in results[100:105]:
        check_error(error, Code.UNAUTHENTICATED, "API_KEY_INVALID")
    check_error(results[-1][0], Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    # None left open. (Awaited: a handler's bookkeeping ends just after its status went
    # out, so the client can be told before the gauge falls.)
    wait_until(lambda: Scrape(h.broker.metrics_url).value(
        "grpc_server_in_flight", **METER) == 0, timeout=5, what="no Meter call in flight")


def test_first_message_deadline_and_stream_caps(limited):
    h = limited
    first, second = h.creds["worker_api_key"], _worker_key(h)

    async def go():
        async with aio_channel(h.target) as ch:
            stub = meter_grpc.MeteringServiceStub(ch)
            # Two silent streams of the first key: its cap.
            held = [stub.Meter(metadata=bearer(first)) for _ in range(2)]
            await asyncio.sleep(0.3)  # let the broker admit them
            over_key, _ = await _silent_stream(ch, bearer(first))
            other = stub.Meter(metadata=bearer(second))  # another key: still admitted ...
            await asyncio.sleep(0.3)
            over_total, _ = await _silent_stream(ch, bearer(second))  # ... up to 3 in all
            timed_out = []
            for call in [*held, other]:  # none sent its first message: ended at 4 s
                try:
                    await asyncio.wait_for(call.read(), 10)
                except grpc.aio.AioRpcError as error:
                    timed_out.append(error)
            # Room again once they ended.
            again, seconds = await _silent_stream(ch, bearer(first))
            return over_key, over_total, timed_out, again, seconds

    over_key, over_total, timed_out, again, seconds = run(go())
    for error in (over_key, over_total):
        check_error(error, Code.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert error_detail(error, error_details_pb2.RetryInfo) is not None
    assert "this key" in over_key.details() and "all keys" in over_total.details()
    assert len(timed_out) == 3
    for error in timed_out:
        check_error(error, Code.INVALID_ARGUMENT, "FIRST_MESSAGE_TIMEOUT")
    check_error(again, Code.INVALID_ARGUMENT, "FIRST_MESSAGE_TIMEOUT")
    assert 3.5 < seconds < 9


def test_failed_authentications_are_throttled_per_address_not_valid_keys(tmp_path):
    broker = BrokerProcess(tmp_path / "broker").start()  # default limits: a burst of 30
    try:
        with grpc.insecure_channel(broker.target) as channel:
            h = Harness(broker, channel)
            errors = []
            for _ in range(40):
                guess = Client(channel, "cbk_" + secrets.token_urlsafe(32))
                try:
                    guess.balance(h.wallet_id)
                except grpc.RpcError as error:
                    errors.append(error)
            assert len(errors) == 40
            for error in errors[:30]:
                check_error(error, Code.UNAUTHENTICATED, "API_KEY_INVALID")
            for error in errors[30:]:
                check_error(error, Code.RESOURCE_EXHAUSTED, "AUTH_THROTTLED")
                retry = error_detail(error, error_details_pb2.RetryInfo)
                assert retry is not None and 0 < retry.retry_delay.ToMilliseconds() <= 1000
            # The valid keys of the same address are not locked out.
            assert h.agent.balance().posted >= 0
            assert h.owner.balance(h.wallet_id).posted >= 0
            # The allowance refills: one failure a second.
            time.sleep(1.1)
            with pytest.raises(grpc.RpcError) as refused:
                Client(channel, "cbk_" + secrets.token_urlsafe(32)).balance(h.wallet_id)
            check_error(refused.value, Code.UNAUTHENTICATED, "API_KEY_INVALID")
    finally:
        broker.stop()
