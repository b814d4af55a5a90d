"""Adversarial callers against a real broker process, filling what test_auth.py,
test_bad_input.py and test_worker_faults.py leave open: another provider's worker
going after our metering session, pinned vouchers at the wrong worker, vouchers
signed with the broker's own (leaked) key or another broker's key, tenant and role
boundaries not covered elsewhere, a worker key revoked while its session is open,
file modes under a permissive umask, and secrets that must not be recoverable from
the data directory. Every refusal is checked to change nothing."""

import asyncio
import base64
import json
import os
import stat
from dataclasses import dataclass

import grpc
import pytest

from broker.keyring import Keyring
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import metering_service_pb2_grpc as meter_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from common import vouchers
from worker.broker_link import MeteringSession
from worker.daemon import load_usage_key

from .broker_process import BrokerProcess
from .conftest import (
    Client,
    aio_channel,
    bearer,
    check_error,
    open_session,
    rid,
    run,
    stream_rpc_error,
    unchanged,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
HELD = auth_pb.AUTHORIZATION_STATE_HELD
REDEEMED = auth_pb.AUTHORIZATION_STATE_REDEEMED
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED



@dataclass
class Provider:
    provider_id: str
    key: str
    worker_id: str


def other_provider(h) -> Provider:
    """A second provider with its own worker key and a registered worker."""
    provider = h.admin.admin.CreateProvider(admin_pb.CreateProviderRequest(
        request_id=rid(), display_name="Mallory's GPUs"))
    key = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER,
        provider_id=provider.provider_id)).api_key
    return Provider(provider.provider_id, key, h.register_worker(key=key))


def redeem(h, key: str, voucher: str, worker_id: str) -> meter_pb.SessionGrant:
    async def go():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, voucher, worker_id)
            await session.abandon()
            return session.grant

    return run(go())


def pipelined(h, key: str, messages: list) -> tuple[list, grpc.RpcError | None]:
    """One metering stream carrying every message at once, without waiting for answers
    (sync gRPC: a request iterator stops being sent when the broker ends the call, so
    the status read is the broker's), read to the end."""
    call = meter_grpc.MeteringServiceStub(h.channel).Meter(
        iter(messages), metadata=bearer(key), timeout=10)
    responses = []
    try:
        for response in call:
            responses.append(response)
    except grpc.RpcError as error:
        return responses, error
    return responses, None


def session_grant(h, session_id: str, worker_id: str, key: str | None = None):
    async def go():
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, key or h.creds["worker_api_key"],
                                                   session_id, worker_id)
            await session.abandon()
            return session.grant

    return run(go())


# -- another provider's worker and our metering session -----------------------------------


def test_another_providers_worker_cannot_touch_our_session(h):
    ours = h.register_worker(gpu_second_price=1000)
    mallory = other_provider(h)
    auth = h.agent.authorize(100_000, ttl_seconds=120)
    key = h.creds["worker_api_key"]

    async def open_ours():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, ours)
            await session.report({"gpu_ms": 40})
            await session.abandon()
            return session.session_id

    session_id = run(open_ours())
    usage = meter_pb.MeterRequest(usage=meter_pb.UsageReport(
        seq=2, usage=res_pb.Usage(gpu_ms=90_000)))
    finish = meter_pb.MeterRequest(finish=meter_pb.FinishSession(
        usage=res_pb.Usage(gpu_ms=90_000)))
    before = h.snapshot()

    # Resume naming their own worker, our worker, or nobody; with usage and a finish
    # pipelined behind it so that they would apply the moment a resume worked.
    for worker_id in (mallory.worker_id, ours, ""):
        resume = meter_pb.MeterRequest(resume=meter_pb.ResumeSession(
            session_id=session_id, worker_id=worker_id))
        responses, error = pipelined(h, mallory.key, [resume, usage, finish])
        assert responses == [] and error is not None, worker_id
        if worker_id:
            check_error(error, NOT_FOUND, "SESSION_NOT_FOUND")
        else:
            check_error(error, INVALID, "INVALID_ARGUMENT")
    # Usage or finish as the first message of a stream: no session to apply to.
    for message in (usage, finish):
        responses, error = pipelined(h, mallory.key, [message])
        assert responses == []
        check_error(error, INVALID, "SESSION_NOT_OPEN")
    # Nor can they open a second session on the voucher, at any worker.
    for worker_id, code, reason in (
            (mallory.worker_id, grpc.StatusCode.FAILED_PRECONDITION,
             "VOUCHER_ALREADY_REDEEMED"),
            (ours, NOT_FOUND, "WORKER_NOT_FOUND")):
        opened = meter_pb.MeterRequest(open=meter_pb.OpenSession(
            voucher=auth.voucher, worker_id=worker_id))
        responses, error = pipelined(h, mallory.key, [opened, usage, finish])
        assert responses == []
        check_error(error, code, reason)
    assert h.snapshot() == before
    # Our worker still has its session exactly as it left it, and settles it.
    grant = session_grant(h, session_id, ours)
    assert (grant.last_seq, grant.charged, grant.usage.gpu_ms, grant.stopped) == \
        (1, 40, 40, False)

    async def finish_ours():
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, key, session_id, ours)
            return await session.finish({"gpu_ms": 55})

    receipt = run(finish_ours())
    assert (receipt.charged, receipt.usage.gpu_ms) == (55, 55)
    assert list(h.summary().violations) == []


def test_resume_must_name_the_worker_that_opened_the_session(h):
    """The same provider's key, but no worker id: not a way around the worker check
    (test_restart.py covers another worker id of the same provider)."""
    ours = h.register_worker()
    auth = h.agent.authorize(50_000, ttl_seconds=120)
    grant = redeem(h, h.creds["worker_api_key"], auth.voucher, ours)
    before = h.snapshot()

    async def resume_anonymously():
        async with aio_channel(h.target) as ch:
            await MeteringSession.resume(ch, h.creds["worker_api_key"], grant.session_id, "")

    with pytest.raises(grpc.RpcError) as caught:
        run(resume_anonymously())
    check_error(caught.value, INVALID, "INVALID_ARGUMENT")
    assert h.snapshot() == before
    assert session_grant(h, grant.session_id, ours).session_id == grant.session_id


# -- vouchers at the wrong worker, or signed by the wrong key ---------------------------


def test_pinned_voucher_is_refused_at_any_other_worker(h):
    """test_worker_faults.py checks the worker daemon's offline refusal; this is the
    broker's own check, for a worker that skips it."""
    pinned = h.register_worker()
    sibling = h.register_worker()  # same provider, same key
    mallory = other_provider(h)
    auth = h.agent.authorize(60_000, ttl_seconds=120, scope=res_pb.Scope(worker_id=pinned))
    key = h.creds["worker_api_key"]
    with unchanged(h, DENIED, "VOUCHER_SCOPE_MISMATCH"):
        redeem(h, key, auth.voucher, sibling)
    with unchanged(h, DENIED, "VOUCHER_SCOPE_MISMATCH"):
        redeem(h, mallory.key, auth.voucher, mallory.worker_id)
    # Another provider naming the pinned worker: not theirs.
    with unchanged(h, NOT_FOUND, "WORKER_NOT_FOUND"):
        redeem(h, mallory.key, auth.voucher, pinned)
    assert h.owner.get_authorization(auth.authorization_id).state == HELD
    assert redeem(h, key, auth.voucher, pinned).budget == 60_000
    assert h.owner.get_authorization(auth.authorization_id).state == REDEEMED


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(voucher: str, **changes) -> vouchers.VoucherClaims:
    raw = json.loads(_b64d(voucher.split(".")[2]))
    claims = vouchers.VoucherClaims(voucher_id=raw["vid"], amount=raw["amt"],
                                    scope=raw["scope"], issued_ms=raw["iat"],
                                    expire_ms=raw["exp"])
    return vouchers.VoucherClaims(**{**claims.__dict__, **changes})


def test_vouchers_signed_with_the_brokers_own_key_but_never_issued(h):
    """The broker's signing key leaked (test_bad_input.py covers strangers' keys): the
    broker still redeems only vouchers it issued, and only for the amount it held."""
    worker_id = h.register_worker()
    auth = h.agent.authorize(30_000, ttl_seconds=120)
    signer = Keyring(h.broker.data_dir / "keys" / "voucher").signer
    assert auth.voucher.split(".")[1] == signer.key_id
    key = h.creds["worker_api_key"]
    # A voucher id the broker never issued.
    invented = vouchers.issue(signer, _claims(auth.voucher, voucher_id="vch_" + "0" * 24,
                                              amount=4_000_000))
    with unchanged(h, DENIED, "VOUCHER_UNKNOWN"):
        redeem(h, key, invented, worker_id)
    # A real voucher id with the amount inflated: the session's budget is what was held.
    inflated = vouchers.issue(signer, _claims(auth.voucher, amount=4_000_000))
    assert inflated != auth.voucher
    grant = redeem(h, key, inflated, worker_id)
    assert grant.budget == 30_000
    assert h.wallet().pending == 30_000
    # ...and the genuine voucher is spent by it, once.
    with unchanged(h, grpc.StatusCode.FAILED_PRECONDITION, "VOUCHER_ALREADY_REDEEMED"):
        redeem(h, key, auth.voucher, worker_id)


def test_voucher_from_another_broker(h, tmp_path):
    """A genuine voucher of another broker installation (its own published key) is
    refused by ours as signed by an unknown key, before anything is looked up."""
    worker_id = h.register_worker()
    auth = h.agent.authorize(30_000, ttl_seconds=120)
    elsewhere = tmp_path / "elsewhere" / "keys" / "voucher"
    Keyring.create(elsewhere)
    foreign = vouchers.issue(Keyring(elsewhere).signer, _claims(auth.voucher))
    assert foreign.split(".")[1] != auth.voucher.split(".")[1]
    with unchanged(h, DENIED, "VOUCHER_UNKNOWN_KEY"):
        redeem(h, h.creds["worker_api_key"], foreign, worker_id)
    assert h.owner.get_authorization(auth.authorization_id).state == HELD


# -- tenants and roles ----------------------------------------------------------------------


def test_tenant_boundaries_not_covered_elsewhere(h):
    other = h.new_tenant()
    worker_id = h.register_worker()
    # Two wallets of ours, so that our listings have a second page.
    h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name="second", cap=1_000_000))
    auths = [h.agent.authorize(10_000, ttl_seconds=120) for _ in range(3)]
    redeem(h, h.creds["worker_api_key"], auths[0].voucher, worker_id)
    ours = h.wallet_id
    theirs_before = other.owner.balance(other.wallet_id)

    # Writes to our wallet and authorizations not covered by test_auth / test_bad_input.
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        other.owner.wallets.UnfreezeWallet(wallet_pb.UnfreezeWalletRequest(
            request_id=rid(), wallet_id=ours))
    for auth in auths[1:]:
        with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            other.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
                request_id=rid(), authorization_id=auth.authorization_id))
    # Page tokens from our listings do not open theirs onto ours.
    page = h.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest(page_size=1))
    assert page.next_page_token
    with unchanged(h, INVALID, "INVALID_PAGE_TOKEN"):
        other.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest(
            page_token=page.next_page_token))
    page = h.agent.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(page_size=1))
    assert page.next_page_token
    with unchanged(h, INVALID, "INVALID_PAGE_TOKEN"):
        other.agent.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
            page_token=page.next_page_token))
    page = h.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(page_size=1))
    assert page.next_page_token
    theirs = other.agent.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
        page_token=page.next_page_token, page_size=1000)).transfers
    assert all(other.wallet_id in (t.debit_account_id, t.credit_account_id) for t in theirs)
    # An auditor bound to their tenant reads none of ours.
    auditor = Client(h.channel, h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AUDITOR, owner_id=other.owner_id)).api_key)
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        auditor.balance(ours)
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        auditor.transfers(ours)
    with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        auditor.get_authorization(auths[0].authorization_id)
    listed = auditor.wallets.ListWallets(wallet_pb.ListWalletsRequest()).wallets
    assert [w.wallet_id for w in listed] == [other.wallet_id]
    assert other.owner.balance(other.wallet_id) == theirs_before


def test_agent_is_bound_to_its_wallet_within_its_own_tenant(h):
    """A second agent of the same owner, on a second wallet, sees nothing of the first
    wallet's authorizations, receipts or transfers, and cannot cancel them."""
    worker_id = h.register_worker()
    wallet = h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name="sibling", cap=1_000_000)).wallet
    h.owner.fund(wallet.wallet_id, 200_000)
    sibling = Client(h.channel, h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=h.owner_id,
        wallet_id=wallet.wallet_id)).api_key)
    held = h.agent.authorize(10_000, ttl_seconds=120)
    settled = h.agent.authorize(10_000, ttl_seconds=120)

    async def settle():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], settled.voucher,
                                         worker_id)
            await session.finish({"gpu_ms": 3})

    run(settle())
    for auth in (held, settled):
        with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            sibling.get_authorization(auth.authorization_id)
        with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            sibling.receipt(auth.authorization_id)
        with unchanged(h, NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            sibling.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
                request_id=rid(), authorization_id=auth.authorization_id))
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        sibling.transfers(h.wallet_id)
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        sibling.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
            wallet_id=h.wallet_id))
    # Its own listing holds none of the first wallet's authorizations.
    mine = sibling.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest()).authorizations
    assert list(mine) == []
    assert h.owner.get_authorization(held.authorization_id).state == HELD


def admin_calls(h, victim_key_id: str) -> dict:
    return {
        "CreateOwner": lambda c: c.admin.CreateOwner(admin_pb.CreateOwnerRequest(
            request_id=rid(), display_name="x")),
        "CreditTreasury": lambda c: c.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id=h.owner_id, amount=1_000_000)),
        "CreateProvider": lambda c: c.admin.CreateProvider(admin_pb.CreateProviderRequest(
            request_id=rid(), display_name="x")),
        "CreateApiKey": lambda c: c.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
            request_id=rid(), role=admin_pb.ROLE_ADMIN)),
        "RevokeApiKey": lambda c: c.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(
            request_id=rid(), key_id=victim_key_id)),
        "GetLedgerSummary": lambda c: c.summary(),
    }


def test_owners_and_agents_cannot_call_the_admin_service(h):
    """Every AdminService RPC, for both tenants' owners and agents: refused by role,
    before the request is looked at (a key of the other tenant as the revoke target)."""
    other = h.new_tenant()
    victim = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=other.owner_id,
        wallet_id=other.wallet_id))
    victim_client = Client(h.channel, victim.api_key)
    for call in admin_calls(h, victim.key_id).values():
        for caller in (h.owner, h.agent, other.owner, other.agent):
            with unchanged(h, DENIED, "ROLE_NOT_ALLOWED"):
                call(caller)
    victim_client.balance()  # still a valid key


def test_agent_cannot_call_worker_rpcs(h):
    worker_id = h.register_worker()
    auth = h.agent.authorize(20_000, ttl_seconds=120)
    registry_calls = {
        "RegisterWorker": lambda c: c.registry.RegisterWorker(registry_pb.RegisterWorkerRequest(
            request_id=rid(), endpoint="127.0.0.1:1",
            capabilities=registry_pb.Capabilities(resource_class="cpu"),
            prices=res_pb.PriceSheet(gpu_second_price=1))),
        "RegisterWorker(update)": lambda c: c.registry.RegisterWorker(
            registry_pb.RegisterWorkerRequest(
                request_id=rid(), worker_id=worker_id, endpoint="10.6.6.6:1",
                capabilities=registry_pb.Capabilities(resource_class="gpu.h100"),
                prices=res_pb.PriceSheet(gpu_second_price=1))),
        "Heartbeat": lambda c: c.registry.Heartbeat(registry_pb.HeartbeatRequest(
            worker_id=worker_id)),
        "DeregisterWorker": lambda c: c.registry.DeregisterWorker(
            registry_pb.DeregisterWorkerRequest(request_id=rid(), worker_id=worker_id)),
    }
    for call in registry_calls.values():
        with unchanged(h, DENIED, "ROLE_NOT_ALLOWED"):
            call(h.agent)
    offers = h.agent.registry.ListOffers(registry_pb.ListOffersRequest()).offers
    mine = [o for o in offers if o.worker_id == worker_id]
    assert len(mine) == 1 and mine[0].endpoint == "127.0.0.1:7001"
    assert mine[0].prices.gpu_second_price == 1000

    # Metering its own, genuine voucher, naming a real worker: refused by role, the
    # voucher stays unredeemed and usable by a real worker.
    opened = meter_pb.MeterRequest(open=meter_pb.OpenSession(
        voucher=auth.voucher, worker_id=worker_id))
    finish = meter_pb.MeterRequest(finish=meter_pb.FinishSession(
        usage=res_pb.Usage(gpu_ms=20_000)))
    before = h.snapshot()
    responses, error = pipelined(h, h.creds["agent_api_key"], [opened, finish])
    assert responses == []
    check_error(error, DENIED, "ROLE_NOT_ALLOWED")
    assert h.snapshot() == before
    assert h.owner.get_authorization(auth.authorization_id).state == HELD
    assert redeem(h, h.creds["worker_api_key"], auth.voucher, worker_id).budget == 20_000


# -- a worker key revoked while its sessions are open -------------------------------------


def test_worker_key_revoked_mid_session(h):
    """Revocation bites at once, also on streams opened before it: no more usage or
    finish with that key. The sessions stay open with what was acknowledged, and the
    provider's replacement key can resume and settle them (or the hold's expiry does)."""
    created = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER, provider_id=h.provider_id))
    worker_id = h.register_worker(key=created.api_key, gpu_second_price=1000)
    first = h.agent.authorize(100_000, ttl_seconds=120)
    second = h.agent.authorize(100_000, ttl_seconds=120)

    def revoke():
        h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(
            request_id=rid(), key_id=created.key_id))

    async def scenario():
        async with aio_channel(h.target) as ch:
            a = await open_session(ch, created.api_key, first.voucher, worker_id)
            b = await open_session(ch, created.api_key, second.voucher, worker_id)
            await asyncio.sleep(0.2)  # a measured rate, not a burst: no STOP
            assert (await a.report({"gpu_ms": 30})).charged == 30
            assert (await b.report({"gpu_ms": 20})).charged == 20
            await asyncio.to_thread(revoke)
            before = await asyncio.to_thread(h.snapshot)
            async with stream_rpc_error(UNAUTHENTICATED, "API_KEY_REVOKED"):
                await a.report({"gpu_ms": 90_000})
            async with stream_rpc_error(UNAUTHENTICATED, "API_KEY_REVOKED"):
                await b.finish({"gpu_ms": 90_000})
            async with stream_rpc_error(UNAUTHENTICATED, "API_KEY_REVOKED"):
                await MeteringSession.resume(ch, created.api_key, a.session_id, worker_id)
            assert await asyncio.to_thread(h.snapshot) == before
            return a.session_id, b.session_id

    sessions = run(scenario())
    for auth in (first, second):
        assert h.owner.get_authorization(auth.authorization_id).state == REDEEMED
    replacement = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_WORKER, provider_id=h.provider_id)).api_key
    grants = [session_grant(h, sid, worker_id, replacement) for sid in sessions]
    assert [(g.last_seq, g.charged) for g in grants] == [(1, 30), (1, 20)]

    async def settle():
        async with aio_channel(h.target) as ch:
            return [await (await MeteringSession.resume(ch, replacement, sid, worker_id))
                    .finish({"gpu_ms": 50}) for sid in sessions]

    receipts = run(settle())
    assert [r.charged for r in receipts] == [50, 50]
    assert list(h.summary().violations) == []


# -- files on disk ----------------------------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_and_data_dir_are_private_under_any_umask(tmp_path):
    """With umask 000 (nothing masked), a fresh data directory is still 0700 and every
    key file 0600; the worker's usage key too. (test_auth.py checks the default umask.)"""
    old = os.umask(0)
    try:
        broker = BrokerProcess(tmp_path / "data").start()
        try:
            usage_key = tmp_path / "worker-state" / "usage-key"
            load_usage_key(usage_key)
        finally:
            broker.stop()
    finally:
        os.umask(old)
    root = broker.data_dir
    keys = root / "keys"
    for directory in (root, keys, keys / "voucher", usage_key.parent):
        assert _mode(directory) == 0o700, f"{directory}: {oct(_mode(directory))}"
    key_files = [p for p in keys.rglob("*") if p.is_file()]
    assert {p.name for p in key_files} >= {"ACTIVE", "cache-scope.key"}
    assert any(p.suffix == ".json" for p in key_files)
    for path in [*key_files, root / "demo-credentials.json", usage_key]:
        assert _mode(path) == 0o600, f"{path}: {oct(_mode(path))}"
    # Nothing else in the data directory is readable by others either: the ledger's
    # files may carry LMDB's own modes, but they sit behind the 0700 root.
    assert not list(root.glob("*.tmp")) and not list(keys.rglob("*.tmp"))


def _secret_forms(secret: str) -> list[bytes]:
    """The secret as text and, where it is base64url, as the raw bytes it encodes."""
    forms = [secret.encode()]
    body = secret.removeprefix("cbk_")
    if len(body) >= 40:
        forms.append(_b64d(body))
    return forms


def test_api_keys_and_vouchers_are_not_recoverable_from_the_data_dir(h):
    """Keys are stored as SHA-256 only and vouchers not at all (Ed25519 signatures are
    deterministic: a retried Authorize re-derives the same token). Checked on every file
    under the data directory but demo-credentials.json, the demo's own credential file,
    after a clean stop (everything flushed)."""
    api_keys = [h.creds[k] for k in ("admin_api_key", "owner_api_key", "agent_api_key",
                                     "worker_api_key")]
    for role, bind in ((admin_pb.ROLE_OWNER, {"owner_id": h.owner_id}),
                       (admin_pb.ROLE_AGENT, {"owner_id": h.owner_id,
                                              "wallet_id": h.wallet_id}),
                       (admin_pb.ROLE_WORKER, {"provider_id": h.provider_id}),
                       (admin_pb.ROLE_AUDITOR, {}), (admin_pb.ROLE_ADMIN, {})):
        for request_id in ("", f"key-{role}"):
            created = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
                request_id=request_id, role=role, **bind))
            api_keys.append(created.api_key)
            if request_id:  # a retry answers without the secret: it is nowhere to be had
                again = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
                    request_id=request_id, role=role, **bind))
                assert (again.key_id, again.api_key) == (created.key_id, "")
    revoked = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=h.owner_id))
    h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(),
                                                             key_id=revoked.key_id))
    api_keys.append(revoked.api_key)

    worker_id = h.register_worker()
    tokens = []
    for request_id in ("", "auth-once"):
        auth = h.agent.authorize(10_000, ttl_seconds=120, request_id=request_id)
        tokens.append(auth.voucher)
        if request_id:  # the retry gets its voucher back, re-derived
            assert h.agent.authorize(10_000, ttl_seconds=120,
                                     request_id=request_id).voucher == auth.voucher
    settled = h.agent.authorize(10_000, ttl_seconds=120)
    tokens.append(settled.voucher)
    h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
        request_id=rid(), authorization_id=h.agent.authorize(10_000).authorization_id))

    async def settle():
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], settled.voucher,
                                         worker_id, request_id="open-once")
            await session.finish({"gpu_ms": 4})

    run(settle())
    h.broker.stop()

    needles = {}
    for key in api_keys:
        assert key.startswith("cbk_")
        for form in _secret_forms(key):
            needles[form] = f"API key {key[:8]}..."
    for token in tokens:
        signature = token.split(".")[3]
        needles[token.encode()] = "voucher token"
        needles[signature.encode()] = "voucher signature (base64url)"
        needles[_b64d(signature)] = "voucher signature (raw)"
    # The demo's own key files (`serve --demo` writes them for `make run`) hold keys by design.
    files = [p for p in h.broker.data_dir.rglob("*")
             if p.is_file() and p.name not in ("demo-credentials.json", "admin.key")]
    assert any(p.name == "data.mdb" for p in files)
    found = []
    for path in files:
        data = path.read_bytes()
        found += [f"{what} in {path.name}" for needle, what in needles.items() if needle in data]
    assert not found, found
