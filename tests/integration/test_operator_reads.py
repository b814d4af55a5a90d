"""Issue 18 item 12: what the operator may read. An admin key reads exactly what an
auditor key bound to no owner reads: every tenant's records, through every read RPC,
naming the owner where a call lists one owner's records. An auditor bound to another
owner sees none of it (NOT_FOUND, as if it did not exist)."""

from __future__ import annotations

import grpc
from nacl.public import PrivateKey

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import pricing_service_pb2 as price_pb
from broker.v1 import pricing_service_pb2_grpc as price_grpc
from broker.v1 import statement_service_pb2 as st_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .conftest import Client, _Bound, bearer, check_error, rid
from .spend_helpers import policy, set_policy


def _auditor(h, owner_id: str = "") -> Client:
    key = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AUDITOR, owner_id=owner_id)).api_key
    return Client(h.channel, key)


def _pricing(h, client: Client) -> _Bound:
    return _Bound(price_grpc.PricingServiceStub(h.channel), bearer(client.key))


def test_admins_read_what_global_auditors_read_in_every_tenant(h):
    t = h.new_tenant()
    set_policy(h, t.owner, approvals=pol_pb.ApprovalRules(threshold=100_000,
                                                          timeout_seconds=600))
    pending = t.agent.authorize(250_000, ttl_seconds=120)
    settled_plan = _pricing(h, t.owner).CreatePlan(price_pb.CreatePlanRequest(
        request_id=rid(), display_name="monthly", credits_per_period=1_000,
        period_seconds=30 * 86_400)).plan
    _pricing(h, t.owner).Subscribe(price_pb.SubscribeRequest(
        request_id=rid(), plan_id=settled_plan.plan_id, wallet_id=t.wallet_id))
    t.owner.statements.RegisterReceiptKey(st_pb.RegisterReceiptKeyRequest(
        request_id=rid(), public_key=bytes(PrivateKey.generate().public_key)))
    auth = t.agent.authorize(1_000, ttl_seconds=120)
    wallet, owner = t.wallet_id, t.owner_id

    reads = {
        "GetWallet": lambda c: c.wallets.GetWallet(wallet_pb.GetWalletRequest(
            wallet_id=wallet)).wallet,
        "ListWallets": lambda c: c.wallets.ListWallets(wallet_pb.ListWalletsRequest(
            owner_id=owner)).wallets,
        "GetBalance": lambda c: c.wallets.GetBalance(wallet_pb.GetBalanceRequest(
            wallet_id=wallet)).balance,
        "ListTransfers": lambda c: c.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
            wallet_id=wallet)).transfers,
        "GetAuthorization": lambda c: c.auths.GetAuthorization(
            auth_pb.GetAuthorizationRequest(authorization_id=auth.authorization_id)),
        "ListAuthorizations": lambda c: c.auths.ListAuthorizations(
            auth_pb.ListAuthorizationsRequest(wallet_id=wallet)).authorizations,
        "GetSpendPolicy": lambda c: policy(h, c).GetSpendPolicy(
            pol_pb.GetSpendPolicyRequest(wallet_id=wallet)).policy,
        "GetSpendStatus": lambda c: policy(h, c).GetSpendStatus(
            pol_pb.GetSpendStatusRequest(wallet_id=wallet)).status.wallet_id,
        "ListApprovals": lambda c: policy(h, c).ListApprovals(
            pol_pb.ListApprovalsRequest(owner_id=owner)).approvals,
        "ListApprovals(wallet)": lambda c: policy(h, c).ListApprovals(
            pol_pb.ListApprovalsRequest(wallet_id=wallet)).approvals,
        "GetApproval": lambda c: policy(h, c).GetApproval(pol_pb.GetApprovalRequest(
            authorization_id=pending.authorization_id)).approval,
        "ListAlerts": lambda c: policy(h, c).ListAlerts(pol_pb.ListAlertsRequest(
            wallet_id=wallet)).alerts,
        "ListPlans": lambda c: _pricing(h, c).ListPlans(price_pb.ListPlansRequest(
            owner_id=owner)).plans,
        "ListSubscriptions": lambda c: _pricing(h, c).ListSubscriptions(
            price_pb.ListSubscriptionsRequest(owner_id=owner)).subscriptions,
        "ListGrants": lambda c: _pricing(h, c).ListGrants(price_pb.ListGrantsRequest(
            wallet_id=wallet)).grants,
        "GetReceiptKey": lambda c: c.statements.GetReceiptKey(st_pb.GetReceiptKeyRequest(
            owner_id=owner)).receipt_key,
        "ListReceipts": lambda c: c.statements.ListReceipts(st_pb.ListReceiptsRequest(
            wallet_id=wallet)).receipts,
        "ListOffers": lambda c: c.registry.ListOffers(registry_pb.ListOffersRequest()).offers,
    }
    admin, global_auditor, other = h.admin, _auditor(h), _auditor(h, h.owner_id)
    for name, read in reads.items():
        by_admin, by_auditor = read(admin), read(global_auditor)
        assert by_admin == by_auditor, name
    # What the per-owner listings found is the tenant's, for admins too (they used to be
    # refused, or see an empty list of approvals).
    assert [w.wallet_id for w in reads["ListWallets"](admin)] == [wallet]
    assert [a.authorization_id for a in reads["ListApprovals"](admin)] == \
        [pending.authorization_id]
    assert reads["ListApprovals(wallet)"](admin) == reads["ListApprovals"](admin)
    assert [p.plan_id for p in reads["ListPlans"](admin)] == [settled_plan.plan_id]
    assert len(reads["ListSubscriptions"](admin)) == 1
    assert reads["GetReceiptKey"](admin).public_key
    # A listing of one owner's records needs the owner from those who read every tenant.
    try:
        admin.wallets.ListWallets(wallet_pb.ListWalletsRequest())
        raise AssertionError("listed wallets without naming the owner")
    except grpc.RpcError as error:
        check_error(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    # An auditor of another tenant sees nothing of this one.
    for name in ("ListWallets", "ListPlans", "ListSubscriptions", "ListApprovals",
                 "GetReceiptKey", "GetWallet"):
        try:
            reads[name](other)
            raise AssertionError(f"{name}: another tenant's auditor read it")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, (name, error.details())
