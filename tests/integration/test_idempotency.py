"""AIP-155 request ids: a retry gets the first answer and changes nothing more; the same
id with different parameters is refused and changes nothing."""

import grpc

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import wallet_service_pb2 as wallet_pb

from .conftest import (
    TREASURY_START,
    WALLET_START,
    Client,
    aio_channel,
    check_error,
    open_session,
    rpc_error,
    run,
)

REUSED = (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


def test_fund_wallet_retry_moves_money_once(h):
    first = h.owner.fund(h.wallet_id, 123_456, request_id="fund-1")
    summary = h.summary()
    second = h.owner.fund(h.wallet_id, 123_456, request_id="fund-1")
    assert second == first  # same transfer id and the balances as first reported
    assert h.summary() == summary
    assert h.wallet().posted == WALLET_START + 123_456
    assert h.treasury().posted == TREASURY_START - 123_456
    fundings = [t for t in h.owner.transfers(h.wallet_id) if t.code == "wallet_funding"]
    assert len(fundings) == 2  # the demo funding and this one

    with rpc_error(*REUSED):
        h.owner.fund(h.wallet_id, 999, request_id="fund-1")
    assert h.summary() == summary
    assert h.wallet().posted == WALLET_START + 123_456


def test_authorize_retry_returns_the_same_voucher(h):
    first = h.agent.authorize(77_000, ttl_seconds=300, request_id="auth-1")
    snapshot = h.snapshot()
    again = h.agent.authorize(77_000, ttl_seconds=300, request_id="auth-1")
    assert again.authorization_id == first.authorization_id
    assert again.voucher == first.voucher
    assert again == first
    assert h.snapshot() == snapshot
    assert h.wallet().pending == 77_000
    listed = h.agent.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest())
    assert [a.authorization_id for a in listed.authorizations] == [first.authorization_id]

    for changed in (dict(amount=77_001, ttl_seconds=300), dict(amount=77_000, ttl_seconds=301)):
        with rpc_error(*REUSED):
            h.agent.authorize(request_id="auth-1", **changed)
        assert h.snapshot() == snapshot


def test_request_ids_are_per_caller(h):
    """The same id from two different keys is two different requests."""
    other = h.new_tenant()
    mine = h.agent.authorize(1_000, ttl_seconds=300, request_id="shared-id")
    theirs = other.agent.authorize(1_000, ttl_seconds=300, request_id="shared-id")
    assert mine.authorization_id != theirs.authorization_id
    assert h.agent.balance().pending == 1_000
    assert other.agent.balance().pending == 1_000
    # ...and also per method: the same id on another call is not a reuse.
    h.owner.fund(h.wallet_id, 5, request_id="shared-id")


def test_create_wallet_and_admin_calls_retry(h):
    request = wallet_pb.CreateWalletRequest(request_id="w-1", display_name="retry",
                                            cap=1_000_000, refill_target=10)
    first = h.owner.wallets.CreateWallet(request).wallet
    second = h.owner.wallets.CreateWallet(request).wallet
    assert second.wallet_id == first.wallet_id
    listed = h.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest()).wallets
    assert sorted(w.wallet_id for w in listed) == sorted([h.wallet_id, first.wallet_id])
    with rpc_error(*REUSED):
        h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
            request_id="w-1", display_name="retry", cap=2_000_000, refill_target=10))

    credit = admin_pb.CreditTreasuryRequest(request_id="c-1", owner_id=h.owner_id,
                                            amount=1_000)
    one = h.admin.admin.CreditTreasury(credit)
    two = h.admin.admin.CreditTreasury(credit)
    assert one == two
    assert h.treasury().posted == TREASURY_START + 1_000

    key_request = admin_pb.CreateApiKeyRequest(request_id="k-1", role=admin_pb.ROLE_AGENT,
                                               owner_id=h.owner_id, wallet_id=h.wallet_id)
    key = h.admin.admin.CreateApiKey(key_request)
    again = h.admin.admin.CreateApiKey(key_request)
    # The same key, not a second one; its secret is shown once and never stored.
    assert again.key_id == key.key_id and key.api_key and again.api_key == ""
    assert Client(h.channel, key.api_key).balance().posted == WALLET_START


def test_cancel_retry(h):
    auth = h.agent.authorize(10_000, ttl_seconds=300)
    request = auth_pb.CancelAuthorizationRequest(request_id="cancel-1",
                                                 authorization_id=auth.authorization_id)
    first = h.agent.auths.CancelAuthorization(request).authorization
    snapshot = h.snapshot()
    again = h.agent.auths.CancelAuthorization(request).authorization
    assert again == first
    assert first.state == auth_pb.AUTHORIZATION_STATE_CANCELLED
    assert h.snapshot() == snapshot
    # A new request id is a new request: the authorization is no longer cancellable.
    with rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "AUTHORIZATION_NOT_CANCELLABLE"):
        h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id="cancel-2", authorization_id=auth.authorization_id))
    assert h.snapshot() == snapshot


def test_open_retry_returns_the_same_session(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(50_000, ttl_seconds=300)
    key = h.creds["worker_api_key"]

    async def go():
        async with aio_channel(h.target) as ch:
            first = await open_session(ch, key, auth.voucher, worker_id, request_id="open-1")
            await first.report({"gpu_ms": 12})
            await first.abandon()  # the worker "lost the reply" and retries the open
            retry = await open_session(ch, key, auth.voucher, worker_id, request_id="open-1")
            try:
                await open_session(ch, key, auth.voucher, worker_id, request_id="open-2")
            except grpc.RpcError as error:
                check_error(error, grpc.StatusCode.FAILED_PRECONDITION,
                            "VOUCHER_ALREADY_REDEEMED")
            else:
                raise AssertionError("a second open with a new request id succeeded")
            receipt = await retry.finish({"gpu_ms": 20})
            return first, retry, receipt

    first, retry, receipt = run(go())
    assert retry.session_id == first.session_id
    # The retry sees the session as it is now, including the acknowledged usage.
    assert (retry.grant.last_seq, retry.grant.charged) == (1, 12)
    assert receipt.charged == 20


def test_open_retry_after_the_voucher_expired_finds_the_session(h):
    """A lost open reply, retried after the hold timed out: the broker answers about the
    session it opened (now settled on its acknowledged usage), not VOUCHER_EXPIRED."""
    worker_id = h.register_worker()
    auth = h.agent.authorize(50_000, ttl_seconds=1)
    key = h.creds["worker_api_key"]

    async def go():
        async with aio_channel(h.target) as ch:
            first = await open_session(ch, key, auth.voucher, worker_id, request_id="late-1")
            await first.report({"gpu_ms": 12})
            await first.abandon()
            h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_SETTLED)
            try:
                await open_session(ch, key, auth.voucher, worker_id, request_id="late-1")
            except grpc.RpcError as error:
                check_error(error, grpc.StatusCode.FAILED_PRECONDITION,
                            "SESSION_ALREADY_SETTLED")
            else:
                raise AssertionError("a retried open of a settled session got a grant")
            try:
                await open_session(ch, key, auth.voucher, worker_id, request_id="late-2")
            except grpc.RpcError as error:
                check_error(error, grpc.StatusCode.FAILED_PRECONDITION,
                            "VOUCHER_ALREADY_REDEEMED")
            else:
                raise AssertionError("a new open of a redeemed voucher got a grant")

    run(go())
    assert h.agent.receipt(auth.authorization_id).charged == 12


def test_retry_after_restart(h):
    """What was remembered before a SIGKILL is still remembered after it."""
    first = h.owner.fund(h.wallet_id, 50_000, request_id="fund-crash")
    auth = h.agent.authorize(9_000, ttl_seconds=300, request_id="auth-crash")
    h.broker.kill()
    h.broker.start()
    assert h.owner.fund(h.wallet_id, 50_000, request_id="fund-crash") == first
    again = h.agent.authorize(9_000, ttl_seconds=300, request_id="auth-crash")
    assert (again.authorization_id, again.voucher) == (auth.authorization_id, auth.voucher)
    balance = h.wallet()
    assert (balance.posted, balance.pending) == (WALLET_START + 50_000, 9_000)
    with rpc_error(*REUSED):
        h.owner.fund(h.wallet_id, 50_001, request_id="fund-crash")


def test_without_request_id_every_call_is_new(h):
    h.owner.fund(h.wallet_id, 1_000, request_id="")
    h.owner.fund(h.wallet_id, 1_000, request_id="")
    assert h.wallet().posted == WALLET_START + 2_000
