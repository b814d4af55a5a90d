"""Spend policies against a real broker: a crossed limit is precise and holds nothing,
rate limits answer with RetryInfo and QuotaFailure, spend velocity survives a restart,
approvals are approved, denied and expire, and raw billing data stays with auditors."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common.status import error_detail

from .conftest import Client, balance_tuple, rid, rpc_error
from .spend_helpers import (
    broker_harness,
    charge,
    policy,
    register_signing_worker,
    set_policy,
    spend_status,
    wait_until,
)

Code = grpc.StatusCode
PENDING = auth_pb.AUTHORIZATION_STATE_PENDING_APPROVAL


@pytest.fixture(scope="module")
def hm(tmp_path_factory):
    with broker_harness(tmp_path_factory.mktemp("spend-policies")) as h:
        yield h


def ledger(h, tenant):
    """What a refused request must leave as it was: ledger totals and the wallet."""
    return h.summary(), balance_tuple(tenant.owner.balance(tenant.wallet_id))


def retry_ms(error) -> int:
    return error_detail(error, error_details_pb2.RetryInfo).retry_delay.ToMilliseconds()


def quota(error) -> list[tuple[str, str]]:
    found = error_detail(error, error_details_pb2.QuotaFailure)
    return [(v.subject, v.description) for v in found.violations]


def test_a_crossed_limit_is_precise_and_holds_nothing(hm):
    t = hm.new_tenant()
    set_policy(hm, t.owner, limits=pol_pb.SpendLimits(daily=300_000, weekly=10**9))
    t.agent.authorize(200_000)
    before = ledger(hm, t)
    with rpc_error(Code.RESOURCE_EXHAUSTED, "SPEND_LIMIT_EXCEEDED") as caught:
        t.agent.authorize(100_001)
    assert ledger(hm, t) == before
    assert quota(caught.value) == [(f"wallet:{t.wallet_id}/daily",
                                    "daily limit 300000: 200000 spent or held, "
                                    "100001 requested")]
    assert 0 < retry_ms(caught.value) <= 86_400_000  # when the UTC day ends
    status = spend_status(hm, t.agent)
    assert (status.spent_today, status.spent_this_week) == (200_000, 200_000)
    t.agent.authorize(100_000)  # exactly up to the limit
    # Other refusals of the policy, each precise and changing nothing.
    set_policy(hm, t.owner, max_per_authorization=1000,
               scope_rules=pol_pb.ScopeRules(allowed_models=["tiny-lm"]))
    before = ledger(hm, t)
    with rpc_error(Code.PERMISSION_DENIED, "POLICY_MODEL_NOT_ALLOWED"):
        t.agent.authorize(10)
    with rpc_error(Code.PERMISSION_DENIED, "POLICY_AMOUNT_ABOVE_MAX") as caught:
        t.agent.authorize(1001, scope=res_pb.Scope(model="tiny-lm"))
    assert quota(caught.value)[0][0] == f"wallet:{t.wallet_id}/max_per_authorization"
    assert ledger(hm, t) == before


def test_request_rate_limit_answers_with_retry_info(hm):
    t = hm.new_tenant()
    set_policy(hm, t.owner, t.wallet_id,
               rate_limits=pol_pb.RateLimits(requests_per_minute=60, burst=2))
    t.agent.balance()
    t.agent.balance()
    with rpc_error(Code.RESOURCE_EXHAUSTED, "RATE_LIMITED") as caught:
        t.agent.balance()
    delay = retry_ms(caught.value)
    assert 0 < delay <= 1000
    (subject, description), = quota(caught.value)
    assert subject.startswith("api_key:key_") and "60 requests per minute" in description
    # The owner is not limited by its agents' policy; the agent is, per key.
    t.owner.balance(t.wallet_id)
    time.sleep(delay / 1000 + 0.05)
    t.agent.balance()


def test_spend_velocity_survives_a_restart(h):
    t = h.new_tenant()
    set_policy(h, t.owner, rate_limits=pol_pb.RateLimits(spend_per_minute=500_000))
    t.agent.authorize(300_000)
    with rpc_error(Code.RESOURCE_EXHAUSTED, "SPEND_VELOCITY_EXCEEDED") as caught:
        t.agent.authorize(300_000)
    first = retry_ms(caught.value)
    assert 0 < first <= 60_000
    assert quota(caught.value)[0][0].endswith("/spend_per_minute")
    h.broker.kill()
    h.broker.start()
    with rpc_error(Code.RESOURCE_EXHAUSTED, "SPEND_VELOCITY_EXCEEDED") as caught:
        t.agent.authorize(300_000)
    assert 0 < retry_ms(caught.value) <= first  # derived from the stored authorizations
    t.agent.authorize(200_000)  # what is left of the minute


# -- approvals --------------------------------------------------------------------------------


def approvals_tenant(hm, *, reserve: bool, timeout_s: int = 600):
    t = hm.new_tenant()
    set_policy(hm, t.owner, approvals=pol_pb.ApprovalRules(
        threshold=100_000, timeout_seconds=timeout_s, reserve_funds=reserve))
    return t


def test_approval_approved_with_a_watching_agent(hm):
    t = approvals_tenant(hm, reserve=True)
    worker_id, usage_key = register_signing_worker(hm)
    request_id = rid()
    auth = t.agent.authorize(250_000, ttl_seconds=120, request_id=request_id)
    assert (auth.state, auth.voucher) == (PENDING, "")
    assert balance_tuple(t.owner.balance(t.wallet_id)) == (1_000_000, 250_000, 750_000)
    seen: list = []

    def watch():
        for message in policy(hm, t.agent).WatchAuthorization(
                pol_pb.WatchAuthorizationRequest(authorization_id=auth.authorization_id),
                timeout=30):
            seen.append(message)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: seen, what="the first watch message")
    assert seen[0].approval.state == pol_pb.APPROVAL_STATE_PENDING
    listed = policy(hm, t.owner).ListApprovals(pol_pb.ListApprovalsRequest()).approvals
    assert [(a.authorization_id, a.amount, a.funds_reserved) for a in listed] == \
        [(auth.authorization_id, 250_000, True)]
    decided = policy(hm, t.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
        request_id=rid(), authorization_id=auth.authorization_id, reason="expected job"))
    assert decided.approval.state == pol_pb.APPROVAL_STATE_APPROVED
    assert decided.authorization.voucher == ""  # the voucher goes to the agent only
    watcher.join(30)
    assert not watcher.is_alive()
    final = seen[-1]
    assert final.approval.state == pol_pb.APPROVAL_STATE_APPROVED
    assert final.approval.reason == "expected job"
    assert final.authorization.state == auth_pb.AUTHORIZATION_STATE_HELD
    assert final.authorization.voucher.startswith("v1.")
    # The reservation became the hold: still 250000 pending, not twice.
    assert balance_tuple(t.owner.balance(t.wallet_id)) == (1_000_000, 250_000, 750_000)
    # Polling gives the same voucher, and it spends.
    polled = policy(hm, t.agent).GetApproval(pol_pb.GetApprovalRequest(
        authorization_id=auth.authorization_id))
    assert polled.authorization.voucher == final.authorization.voucher
    # So does retrying the Authorize itself (same request_id).
    retried = t.agent.authorize(250_000, ttl_seconds=120, request_id=request_id)
    assert (retried.state, retried.voucher) == \
        (auth_pb.AUTHORIZATION_STATE_HELD, final.authorization.voucher)
    receipt = charge(hm, worker_id, final.authorization.voucher, 1234, usage_key)
    assert receipt.charged == 1234
    with rpc_error(Code.FAILED_PRECONDITION, "APPROVAL_NOT_PENDING"):
        policy(hm, t.owner).DenyAuthorization(pol_pb.DenyAuthorizationRequest(
            request_id=rid(), authorization_id=auth.authorization_id, reason="late"))
    assert list(hm.summary().violations) == []


def test_approval_denied_by_the_owner(hm):
    t = approvals_tenant(hm, reserve=False)
    auth = t.agent.authorize(150_000)
    assert balance_tuple(t.owner.balance(t.wallet_id)) == (1_000_000, 0, 1_000_000)
    with rpc_error(Code.INVALID_ARGUMENT, "INVALID_ARGUMENT"):  # a denial needs a reason
        policy(hm, t.owner).DenyAuthorization(pol_pb.DenyAuthorizationRequest(
            request_id=rid(), authorization_id=auth.authorization_id))
    other = hm.new_tenant()
    with rpc_error(Code.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        policy(hm, other.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
            request_id=rid(), authorization_id=auth.authorization_id))
    with rpc_error(Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):  # not the agent itself
        policy(hm, t.agent).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
            request_id=rid(), authorization_id=auth.authorization_id))
    policy(hm, t.owner).DenyAuthorization(pol_pb.DenyAuthorizationRequest(
        request_id=rid(), authorization_id=auth.authorization_id, reason="not this week"))
    polled = policy(hm, t.agent).GetApproval(pol_pb.GetApprovalRequest(
        authorization_id=auth.authorization_id))
    assert (polled.approval.state, polled.approval.reason) == \
        (pol_pb.APPROVAL_STATE_DENIED, "not this week")
    assert (polled.authorization.state, polled.authorization.voucher) == \
        (auth_pb.AUTHORIZATION_STATE_DENIED, "")
    assert spend_status(hm, t.agent).spent_today == 0


def test_approval_unanswered_expires_as_denied_and_releases_the_reservation(hm):
    t = approvals_tenant(hm, reserve=True, timeout_s=1)
    auth = t.agent.authorize(150_000)
    assert t.owner.balance(t.wallet_id).pending == 150_000
    final = list(policy(hm, t.agent).WatchAuthorization(
        pol_pb.WatchAuthorizationRequest(authorization_id=auth.authorization_id), timeout=20))
    assert final[-1].approval.state == pol_pb.APPROVAL_STATE_EXPIRED
    assert final[-1].authorization.state == auth_pb.AUTHORIZATION_STATE_DENIED
    assert final[-1].approval.reason.startswith("no answer within")
    assert balance_tuple(t.owner.balance(t.wallet_id)) == (1_000_000, 0, 1_000_000)
    assert t.agent.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_DENIED


def test_decisions_and_policy_changes_are_journaled(hm):
    t = approvals_tenant(hm, reserve=False)
    auth = t.agent.authorize(150_000)
    policy(hm, t.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
        request_id=rid(), authorization_id=auth.authorization_id, reason="ok"))
    entries, token = [], ""
    while True:
        page = policy(hm, hm.admin).ListJournalEntries(pol_pb.ListJournalEntriesRequest(
            page_size=200, page_token=token))
        entries += page.entries
        token = page.next_page_token
        if not token:
            break
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    mine = [(e.kind, json.loads(e.data_json)) for e in entries
            if t.owner_id in e.data_json or auth.authorization_id in e.data_json]
    kinds = [kind for kind, _ in mine]
    assert "policy_set" in kinds
    assert kinds[-3:] == ["approval_requested", "authorized", "approval_decided"]
    assert mine[-1][1]["decision"] == "approved" and mine[-1][1]["reason"] == "ok"


# -- access to raw billing data ----------------------------------------------------------------


def test_raw_billing_data_is_for_auditors_and_admins(hm):
    t = hm.new_tenant()
    key = hm.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AUDITOR)).api_key
    global_auditor = Client(hm.channel, key)
    key = hm.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AUDITOR, owner_id=t.owner_id)).api_key
    tenant_auditor = Client(hm.channel, key)
    for client in (t.agent, t.owner, tenant_auditor, hm.worker):
        with rpc_error(Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
            policy(hm, client).ListJournalEntries(pol_pb.ListJournalEntriesRequest())
        with rpc_error(Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
            policy(hm, client).Audit(pol_pb.AuditRequest())
    for client in (global_auditor, hm.admin):
        assert policy(hm, client).ListJournalEntries(
            pol_pb.ListJournalEntriesRequest(page_size=1)).entries[0].seq == 1
        assert policy(hm, client).Audit(pol_pb.AuditRequest()).ok
    # An agent sees its own wallet only, and no alerts or approval lists.
    for call, request in (("GetSpendStatus", pol_pb.GetSpendStatusRequest),
                          ("GetSpendPolicy", pol_pb.GetSpendPolicyRequest)):
        with rpc_error(Code.NOT_FOUND, "WALLET_NOT_FOUND"):
            getattr(policy(hm, t.agent), call)(request(wallet_id=hm.wallet_id))
    with rpc_error(Code.NOT_FOUND, "WALLET_NOT_FOUND"):
        t.agent.wallets.GetWallet(wallet_pb.GetWalletRequest(wallet_id=hm.wallet_id))
    for call, request in (("ListAlerts", pol_pb.ListAlertsRequest),
                          ("ListApprovals", pol_pb.ListApprovalsRequest),
                          ("ListDisputes", pol_pb.ListDisputesRequest)):
        with rpc_error(Code.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
            getattr(policy(hm, t.agent), call)(request())
    # Another tenant's owner sees nothing of this one.
    other = hm.new_tenant()
    with rpc_error(Code.NOT_FOUND, "WALLET_NOT_FOUND"):
        policy(hm, other.owner).GetSpendStatus(pol_pb.GetSpendStatusRequest(
            wallet_id=t.wallet_id))
    with rpc_error(Code.NOT_FOUND, "WALLET_NOT_FOUND"):
        policy(hm, other.owner).ListAlerts(pol_pb.ListAlertsRequest(wallet_id=t.wallet_id))
