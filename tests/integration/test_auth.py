"""API keys, roles and tenants: who may call what, and secrets stay secret."""

import asyncio
import contextlib
import stat

import grpc
import pytest

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import metering_service_pb2_grpc as meter_grpc
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .conftest import Client, aio_channel, check_error, open_session, rid, rpc_error, run

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def test_missing_or_invalid_key(h):
    with rpc_error(UNAUTHENTICATED, "API_KEY_MISSING"):
        h.anon.balance()
    with rpc_error(UNAUTHENTICATED, "API_KEY_MISSING"):
        h.anon.summary()
    with rpc_error(UNAUTHENTICATED, "API_KEY_INVALID"):
        Client(h.channel, "cbk_" + "A" * 43).balance()
    # A well-formed header with another scheme carries no key.
    stub = h.anon.wallets
    with rpc_error(UNAUTHENTICATED, "API_KEY_MISSING"):
        stub._stub.GetBalance(wallet_pb.GetBalanceRequest(), timeout=10, metadata=(
            ("authorization", f"Basic {h.creds['agent_api_key']}"),))


def test_revoked_key(h):
    created = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=h.owner_id,
        wallet_id=h.wallet_id, description="short-lived"))
    agent = Client(h.channel, created.api_key)
    assert agent.balance().posted == 5_000_000
    agent.authorize(1_000, ttl_seconds=60)
    h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(),
                                                             key_id=created.key_id))
    before = h.snapshot()
    with rpc_error(UNAUTHENTICATED, "API_KEY_REVOKED"):
        agent.balance()
    with rpc_error(UNAUTHENTICATED, "API_KEY_REVOKED"):
        agent.authorize(1_000, ttl_seconds=60)
    assert h.snapshot() == before
    # The demo agent key is unaffected.
    assert h.agent.balance().pending == 1_000


def test_revoked_worker_key_cannot_meter(h):
    created = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER, provider_id=h.provider_id))
    worker_id = h.register_worker(key=created.api_key)
    auth = h.agent.authorize(10_000, ttl_seconds=60)
    h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(),
                                                             key_id=created.key_id))

    async def go():
        async with aio_channel(h.target) as ch:
            await open_session(ch, created.api_key, auth.voucher, worker_id)

    with pytest.raises(grpc.RpcError) as caught:
        run(go())
    check_error(caught.value, UNAUTHENTICATED, "API_KEY_REVOKED")
    assert h.owner.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_HELD


def role_calls(h):
    """(name, callable taking a Client) for one call of each kind."""
    return {
        "CreateOwner": lambda c: c.admin.CreateOwner(admin_pb.CreateOwnerRequest(
            request_id=rid(), display_name="x")),
        "CreditTreasury": lambda c: c.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id=h.owner_id, amount=1)),
        "CreateApiKey": lambda c: c.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
            request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=h.owner_id)),
        "GetLedgerSummary": lambda c: c.summary(),
        "CreateWallet": lambda c: c.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
            request_id=rid(), display_name="x", cap=1_000)),
        "FundWallet": lambda c: c.fund(h.wallet_id, 1),
        "GetBalance": lambda c: c.balance(h.wallet_id),
        "ListTransfers": lambda c: c.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
            wallet_id=h.wallet_id)),
        "ListWallets": lambda c: c.wallets.ListWallets(wallet_pb.ListWalletsRequest(
            owner_id=h.owner_id)),
        "Authorize": lambda c: c.authorize(1, ttl_seconds=60),
        "ListOffers": lambda c: c.registry.ListOffers(registry_pb.ListOffersRequest()),
        "RegisterWorker": lambda c: c.registry.RegisterWorker(
            registry_pb.RegisterWorkerRequest(
                request_id=rid(), endpoint="127.0.0.1:1",
                capabilities=registry_pb.Capabilities(resource_class="cpu"))),
    }


# Which calls each demo role may make; every other call must be PERMISSION_DENIED.
ALLOWED = {
    "admin": {"CreateOwner", "CreditTreasury", "CreateApiKey", "GetLedgerSummary",
              "GetBalance", "ListTransfers", "ListWallets", "ListOffers"},
    "owner": {"CreateWallet", "FundWallet", "GetBalance", "ListTransfers", "ListWallets",
              "ListOffers"},
    "agent": {"GetBalance", "ListTransfers", "Authorize", "ListOffers"},
    "worker": {"RegisterWorker"},
    # An auditor bound to one owner sees that owner only: not the ledger-wide summary.
    "auditor": {"GetBalance", "ListTransfers", "ListWallets", "ListOffers"},
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_each_role_can_only_call_what_it_should(h, role):
    if role == "auditor":  # not among the demo keys: one bound to the demo owner
        client = Client(h.channel, h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
            request_id=rid(), role=admin_pb.ROLE_AUDITOR, owner_id=h.owner_id)).api_key)
    else:
        client = getattr(h, role)
    for name, call in role_calls(h).items():
        if name in ALLOWED[role]:
            call(client)  # must not raise
        else:
            with rpc_error(DENIED, "ROLE_NOT_ALLOWED"):
                call(client)


@pytest.mark.parametrize("role", ["owner", "agent", "admin"])
def test_only_workers_meter(h, role):
    async def go():
        async with aio_channel(h.target) as ch:
            call = meter_grpc.MeteringServiceStub(ch).Meter(
                metadata=(("authorization", f"Bearer {h.creds[f'{role}_api_key']}"),))
            await call.write(meter_pb.MeterRequest(open=meter_pb.OpenSession(
                voucher="v1.x.y.z", worker_id="wrk_0000000000000000")))
            await call.done_writing()
            await call.read()

    with pytest.raises(grpc.RpcError) as caught:
        run(go())
    check_error(caught.value, DENIED, "ROLE_NOT_ALLOWED")


def test_refused_streams_report_the_refusal_under_load(h):
    """A stream refused at once must not reach the client as INTERNAL (grpc.aio reports
    INTERNAL when the call ends while the client is still writing its first message)."""
    key = h.creds["agent_api_key"]

    async def one(ch):
        try:
            await open_session(ch, key, "v1.x.y.z", "wrk_0000000000000000")
        except grpc.RpcError as error:
            return error
        return None

    async def go():
        async with aio_channel(h.target) as ch:
            results = []
            for _ in range(4):
                results += await asyncio.gather(*(one(ch) for _ in range(50)))
            return results

    for error in run(go()):
        assert error is not None
        check_error(error, DENIED, "ROLE_NOT_ALLOWED")


def test_other_tenant_cannot_see_or_fund_our_wallet(h):
    other = h.new_tenant()
    worker_id = h.register_worker()
    auth = h.agent.authorize(20_000, ttl_seconds=60)

    async def settle():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            return await session.finish({"gpu_ms": 3})

    run(settle())
    before = h.snapshot()
    ours = h.wallet_id
    calls = {
        "GetWallet": lambda c: c.wallets.GetWallet(wallet_pb.GetWalletRequest(wallet_id=ours)),
        "GetBalance": lambda c: c.balance(ours),
        "ListTransfers": lambda c: c.transfers(ours),
        "ListAuthorizations": lambda c: c.auths.ListAuthorizations(
            auth_pb.ListAuthorizationsRequest(wallet_id=ours)),
        "FundWallet": lambda c: c.fund(ours, 1_000),
        "FreezeWallet": lambda c: c.wallets.FreezeWallet(wallet_pb.FreezeWalletRequest(
            request_id=rid(), wallet_id=ours)),
    }
    for name, call in calls.items():
        for client in (other.owner, other.agent):
            if name in ("FundWallet", "FreezeWallet") and client is other.agent:
                continue  # agents are refused by role first
            with rpc_error(NOT_FOUND, "WALLET_NOT_FOUND"):
                call(client)
    for client in (other.owner, other.agent):
        with rpc_error(NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            client.get_authorization(auth.authorization_id)
        with rpc_error(NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            client.receipt(auth.authorization_id)
    listed = other.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest()).wallets
    assert [w.wallet_id for w in listed] == [other.wallet_id]
    assert h.snapshot() == before
    # Sanity: our own owner sees all of it.
    assert h.owner.receipt(auth.authorization_id).charged == 3


def test_agent_key_is_bound_to_its_wallet(h):
    # Another wallet of the same owner is still off limits to this agent.
    wallet = h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name="second", cap=1_000_000)).wallet
    with rpc_error(NOT_FOUND, "WALLET_NOT_FOUND"):
        h.agent.balance(wallet.wallet_id)
    assert h.agent.balance().posted == 5_000_000


def test_voucher_keys_need_no_key(h):
    reply = h.anon.keys.ListVoucherKeys(keys_pb.ListVoucherKeysRequest())
    assert len(reply.keys) >= 1
    assert reply.keys[0].active
    assert len(reply.keys[0].public_key) == 32
    assert reply.keys[0].key_id.startswith("k")


def test_key_files_are_private(h):
    files = [*sorted((h.broker.data_dir / "keys" / "voucher").glob("*.json")),
             h.broker.data_dir / "demo-credentials.json"]
    assert len(files) >= 2
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
    for directory in (h.broker.data_dir, h.broker.data_dir / "keys",
                      h.broker.data_dir / "keys" / "voucher"):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory


def test_secrets_never_appear_in_the_log(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(10_000, ttl_seconds=60)
    # Failures too: a wrong key, a forged voucher.
    with rpc_error(UNAUTHENTICATED, "API_KEY_INVALID"):
        Client(h.channel, "cbk_not_a_real_key_but_secret_looking_xyz").balance()

    async def go():
        async with aio_channel(h.target) as ch:
            with contextlib.suppress(grpc.RpcError):
                await open_session(ch, h.creds["worker_api_key"], auth.voucher + "x",
                                   worker_id)
            session = await open_session(ch, h.creds["worker_api_key"], auth.voucher,
                                         worker_id)
            await session.finish({"gpu_ms": 1})

    run(go())
    h.broker.stop()  # flush everything
    log = h.broker.log()
    assert "broker listening" in log  # the log is the real one
    secrets = [h.creds[k] for k in ("admin_api_key", "owner_api_key", "agent_api_key",
                                    "worker_api_key")]
    secrets += ["cbk_not_a_real_key_but_secret_looking_xyz", auth.voucher,
                auth.voucher.split(".")[3]]
    for secret in secrets:
        assert secret not in log


def test_api_key_secrets_are_stored_only_hashed(h):
    created = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=h.owner_id))
    h.broker.stop()
    ledger = h.broker.data_dir / "ledger" / "data.mdb"
    assert created.api_key.encode() not in ledger.read_bytes()
