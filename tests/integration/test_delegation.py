"""Delegation against a real broker: an owner manages its agents' keys, an agent creates
a sub-budget whose key authorizes and narrows a voucher offline; every bad input is
refused with its status and reason, and nothing held or spent."""

from __future__ import annotations

import grpc
from nacl.signing import SigningKey, VerifyKey

from broker.client import narrow_voucher
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import delegation_service_pb2 as pb
from broker.v1 import delegation_service_pb2_grpc as pb_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common import vouchers
from common.clock import now_ms

from .conftest import Client, _Bound, bearer, rid, rpc_error, unchanged

OK = grpc.StatusCode


def delegation(h, key: str):
    return _Bound(pb_grpc.DelegationServiceStub(h.channel), bearer(key))


def test_owner_agent_keys_and_a_sub_budget_end_to_end(h):
    owner = delegation(h, h.owner.key)
    made = owner.CreateAgentKey(pb.CreateAgentKeyRequest(request_id=rid(),
                                                         wallet_id=h.wallet_id,
                                                         description="planner"))
    listed = owner.ListAgentKeys(pb.ListAgentKeysRequest(wallet_id=h.wallet_id)).keys
    assert made.key_id in {k.key_id for k in listed}
    planner = Client(h.channel, made.api_key)
    assert planner.balance().available > 0
    # Another tenant sees none of it.
    other = h.new_tenant()
    with unchanged(h, OK.NOT_FOUND, "API_KEY_NOT_FOUND"):
        delegation(h, other.owner.key).RevokeAgentKey(pb.RevokeAgentKeyRequest(
            request_id=rid(), key_id=made.key_id))
    with unchanged(h, OK.NOT_FOUND, "WALLET_NOT_FOUND"):
        delegation(h, other.owner.key).CreateAgentKey(pb.CreateAgentKeyRequest(
            request_id=rid(), wallet_id=h.wallet_id))
    with rpc_error(OK.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
        delegation(h, h.agent.key).CreateAgentKey(pb.CreateAgentKeyRequest(
            request_id=rid(), wallet_id=h.wallet_id))

    # The planner hands a sub-agent a narrower budget.
    agent = delegation(h, made.api_key)
    available = planner.balance().available
    with unchanged(h, OK.FAILED_PRECONDITION, "SUB_BUDGET_CAP_ABOVE_ALLOWANCE"):
        agent.CreateSubBudget(pb.CreateSubBudgetRequest(request_id=rid(), display_name="sub",
                                                        cap=available + 1))
    child = agent.CreateSubBudget(pb.CreateSubBudgetRequest(
        request_id=rid(), display_name="sub-agent", cap=200_000,
        scope=pb.SubBudgetScope(models=["tiny-lm"],
                                max_prices=res_pb.PriceSheet(gpu_second_price=5_000))))
    assert child.sub_budget.root_wallet_id == h.wallet_id and child.sub_budget.depth == 1
    with unchanged(h, OK.PERMISSION_DENIED, "SUB_BUDGET_WIDER_THAN_PARENT"):
        delegation(h, child.api_key).CreateSubBudget(pb.CreateSubBudgetRequest(
            request_id=rid(), display_name="x", cap=10,
            scope=pb.SubBudgetScope(models=["other-model"])))
    sub_agent = Client(h.channel, child.api_key)
    with unchanged(h, OK.PERMISSION_DENIED, "SUB_BUDGET_SCOPE_NOT_ALLOWED"):
        sub_agent.authorize(1_000, scope=res_pb.Scope(model="other-model"))
    with unchanged(h, OK.FAILED_PRECONDITION, "SUB_BUDGET_EXCEEDED"):
        sub_agent.authorize(200_001, scope=res_pb.Scope(model="tiny-lm"))
    with unchanged(h, OK.NOT_FOUND, "WALLET_NOT_FOUND"):  # another wallet's money
        sub_agent.wallets.GetBalance(wallet_pb.GetBalanceRequest(wallet_id=h.wallet_id))

    holder = SigningKey.generate()
    auth = sub_agent.auths.Authorize(auth_pb.AuthorizeRequest(
        request_id=rid(), amount=50_000, scope=res_pb.Scope(model="tiny-lm"),
        holder_public_key=bytes(holder.verify_key))).authorization
    assert auth.scope.max_prices.gpu_second_price == 5_000  # narrowed to the sub-budget
    assert h.wallet().pending >= 50_000  # the root's money is held
    got = delegation(h, made.api_key).GetSubBudget(pb.GetSubBudgetRequest(
        wallet_id=child.wallet.wallet_id)).sub_budget
    assert got.held == 50_000
    derived = narrow_voucher(auth.voucher, holder, amount=10_000,
                             expire_ms=now_ms() + 60_000, scope={"model": "tiny-lm"})
    keys = {k.key_id: VerifyKey(k.public_key) for k in h.anon.keys.ListVoucherKeys(
        keys_pb.ListVoucherKeysRequest()).keys}
    claims = vouchers.verify(derived, keys, now_ms())
    assert claims.amount == 10_000 and claims.family_id == vouchers.verify(
        auth.voucher, keys, now_ms()).voucher_id

    # Revoking the sub-budget stops it; revoking the planner's key locks the planner out.
    delegation(h, made.api_key).RevokeSubBudget(pb.RevokeSubBudgetRequest(
        request_id=rid(), wallet_id=child.wallet.wallet_id))
    with rpc_error(OK.FAILED_PRECONDITION, "SUB_BUDGET_REVOKED"):
        sub_agent.authorize(1, scope=res_pb.Scope(model="tiny-lm"))
    revoked = owner.RevokeAgentKey(pb.RevokeAgentKeyRequest(request_id=rid(),
                                                            key_id=made.key_id)).key
    assert revoked.revoked
    with rpc_error(OK.UNAUTHENTICATED, "API_KEY_REVOKED"):
        planner.balance()
    assert list(h.summary().violations) == []
