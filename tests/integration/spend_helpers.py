"""Helpers for the spend-control tests: PolicyService stubs, a module-scoped broker, and
a colluding worker that charges whatever it is asked to (MeteringSession, no job)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import grpc
from nacl.signing import SigningKey

from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import policy_service_pb2_grpc as pol_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .broker_process import BrokerProcess
from .conftest import Client, Harness, _Bound, aio_channel, bearer, open_session, rid, run


def policy(h: Harness, client: Client) -> _Bound:
    """PolicyService, called with the client's key."""
    return _Bound(pol_grpc.PolicyServiceStub(h.channel), bearer(client.key) if client.key else ())


@contextmanager
def broker_harness(directory, *extra_args: str):
    broker = BrokerProcess(directory / "data", extra_args=extra_args).start()
    try:
        with grpc.insecure_channel(broker.target) as channel:
            yield Harness(broker, channel)
    finally:
        broker.stop()


def set_policy(h: Harness, owner: Client, wallet_id: str = "", **fields) -> pol_pb.SpendPolicy:
    return policy(h, owner).SetSpendPolicy(pol_pb.SetSpendPolicyRequest(
        request_id=rid(), wallet_id=wallet_id, policy=pol_pb.SpendPolicy(**fields))).policy


def spend_status(h: Harness, client: Client, wallet_id: str = "") -> pol_pb.SpendStatus:
    request = pol_pb.GetSpendStatusRequest(wallet_id=wallet_id)
    return policy(h, client).GetSpendStatus(request).status


def register_signing_worker(h: Harness, gpu_second_price: int = 1000) -> tuple[str, SigningKey]:
    """A worker of the demo provider that signs its usage (1 micro-credit per GPU-ms)."""
    key = SigningKey.generate()
    reply = h.worker.registry.RegisterWorker(registry_pb.RegisterWorkerRequest(
        request_id=rid(), endpoint="127.0.0.1:7001",
        capabilities=registry_pb.Capabilities(resource_class="cpu", models=["tiny-lm"],
                                              meter="cpu_time"),
        prices=res_pb.PriceSheet(gpu_second_price=gpu_second_price),
        usage_public_key=key.verify_key.encode()))
    return reply.worker_id, key


def charge(h: Harness, worker_id: str, voucher: str, gpu_ms: int,
           usage_key: SigningKey | None = None) -> res_pb.Receipt:
    """Redeem, report `gpu_ms` once, finish: the receipt (STOPPED if it used the hold)."""

    async def job():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], voucher, worker_id,
                                         usage_key=usage_key)
            await session.report({"gpu_ms": gpu_ms})
            return await session.finish({"gpu_ms": gpu_ms})

    return run(job())


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
