"""Many workers race to redeem one voucher: exactly one wins."""

import asyncio

import grpc

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import authorization_service_pb2_grpc as auth_grpc

from .conftest import WALLET_START, check_error, open_session, run

RACERS = 50


def test_fifty_concurrent_redemptions_of_one_voucher(h):
    worker_ids = [h.register_worker() for _ in range(3)]
    held = 250_000
    auth = h.agent.authorize(held, ttl_seconds=120)
    before = h.summary()
    key = h.creds["worker_api_key"]

    async def race():
        # One channel with its own connection per racer, all connected before the start.
        channels = [grpc.aio.insecure_channel(
            h.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(RACERS)]
        try:
            await asyncio.gather(*(ch.channel_ready() for ch in channels))
            start = asyncio.Event()

            async def attempt(i: int, ch):
                await start.wait()
                return await open_session(ch, key, auth.voucher, worker_ids[i % 3],
                                          request_id=f"racer-{i}")

            tasks = [asyncio.create_task(attempt(i, ch)) for i, ch in enumerate(channels)]
            await asyncio.sleep(0.05)
            start.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            # The winner settles with a small charge, so the ledger has a complete story.
            receipts = [await w.finish({"gpu_ms": 123}) for w in winners]
            return results, winners, receipts
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))

    results, winners, receipts = run(race())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, f"{len(winners)} sessions opened for one voucher"
    assert len(errors) == RACERS - 1
    for error in errors:
        assert isinstance(error, grpc.RpcError), repr(error)
        check_error(error, grpc.StatusCode.FAILED_PRECONDITION, "VOUCHER_ALREADY_REDEEMED")

    receipt = receipts[0]
    assert receipt.session_id == winners[0].session_id
    assert (receipt.held, receipt.charged) == (held, 123)
    settled = h.owner.get_authorization(auth.authorization_id)
    assert settled.state == auth_pb.AUTHORIZATION_STATE_SETTLED
    assert settled.receipt_id == receipt.receipt_id
    # Charged once: 123, refilled once.
    wallet = h.wallet()
    assert (wallet.posted, wallet.pending) == (WALLET_START, 0)
    after = h.summary()
    assert list(after.violations) == []
    # hold already counted in `before`; post + payout + fee + refill, and nothing else.
    assert after.transfer_count == before.transfer_count + 4


def test_concurrent_authorizations_never_overdraw_the_wallet(h):
    """Holds placed at once by one agent are checked against the wallet one by one."""
    key = h.creds["agent_api_key"]
    amount = 600_000  # 8 fit in 5_000_000, the 9th and later do not

    async def race():
        async with grpc.aio.insecure_channel(h.target) as ch:
            stub = auth_grpc.AuthorizationServiceStub(ch)
            calls = [stub.Authorize(auth_pb.AuthorizeRequest(
                request_id=f"a-{i}", amount=amount, ttl_seconds=120),
                metadata=(("authorization", f"Bearer {key}"),), timeout=10)
                for i in range(20)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = run(race())
    granted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(granted) == WALLET_START // amount == 8
    for error in refused:
        check_error(error, grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    wallet = h.wallet()
    assert (wallet.posted, wallet.pending) == (WALLET_START, 8 * amount)
    assert wallet.available == WALLET_START - 8 * amount
    assert list(h.summary().violations) == []
