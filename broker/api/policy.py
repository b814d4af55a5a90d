"""PolicyService: spend policies, approvals, refills, alerts, audits, disputes, refunds."""

from __future__ import annotations

import asyncio

from common import convert

from ..core import (
    access,
    alerts,
    approvals,
    audit,
    authorizations,
    policy,
    refills,
    refunds,
)
from ..store.base import Record
from ..v1 import policy_service_pb2 as pb
from ..v1 import policy_service_pb2_grpc as pb_grpc
from . import policy_convert as pc
from .base import Services, streaming, unary

READERS = ("owner", "agent", "auditor", "admin")
OVERSEERS = ("owner", "auditor", "admin")  # alerts, approvals, disputes: not agents


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    # -- policies, refills ----------------------------------------------------------------

    @unary
    async def SetSpendPolicy(self, request, context):
        p = await self.s.authenticate(context, "owner")
        raw = pc.policy_from_proto(request.policy)
        result = await self.s.mutate(p, "SetSpendPolicy", request, lambda tx, now: (
            policy.set_policy(tx, p, request.wallet_id, raw, request.clear, now)))
        return pb.SetSpendPolicyResponse(policy=pc.policy_to_proto(result))

    @unary
    async def GetSpendPolicy(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        found, source = await self.s.read(lambda tx: policy.get_policy(tx, p, request.wallet_id))
        return pb.GetSpendPolicyResponse(policy=pc.policy_to_proto(found),
                                         source=pc.SOURCES[source])

    @unary
    async def GetSpendStatus(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        found = await self.s.read(lambda tx: refills.status(tx, p, request.wallet_id,
                                                            self.s.clock()))
        return pb.GetSpendStatusResponse(status=pc.status(found))

    @unary
    async def ResumeRefills(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "ResumeRefills", request, lambda tx, now: (
            refills.resume(tx, p, request.wallet_id, now)))
        return pb.ResumeRefillsResponse(status=pc.status(result))

    # -- approvals ------------------------------------------------------------------------

    @unary
    async def ListApprovals(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: approvals.list_pending(
            tx, p, request.owner_id, request.wallet_id, request.page_size,
            request.page_token))
        return pb.ListApprovalsResponse(approvals=[pc.approval(a) for a in page["approvals"]],
                                        next_page_token=page["next_page_token"])

    @unary
    async def GetApproval(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        approval, auth = await self.s.read(lambda tx: approvals.get(
            tx, p, request.authorization_id))
        return pb.GetApprovalResponse(approval=pc.approval(approval),
                                      authorization=self._authorization(p, auth))

    @unary
    async def ApproveAuthorization(self, request, context):
        return pb.ApproveAuthorizationResponse(
            **await self._decide(request, context, "ApproveAuthorization", approvals.approve))

    @unary
    async def DenyAuthorization(self, request, context):
        return pb.DenyAuthorizationResponse(
            **await self._decide(request, context, "DenyAuthorization", approvals.deny))

    async def _decide(self, request, context, method: str, decide) -> dict:
        p = await self.s.authenticate(context, "owner")

        def op(tx, now) -> Record:
            approval, auth = decide(tx, p, request.authorization_id, request.reason, now)
            return {"approval": approval, "authorization": auth}

        result = await self.s.mutate(p, method, request, op)
        self.s.changes.notify()
        return {"approval": pc.approval(result["approval"]),
                "authorization": convert.authorization(result["authorization"])}

    @streaming
    async def WatchAuthorization(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        with self.s.changes.watching():
            async for message in self._watch_authorization(p, request):
                yield message

    async def _watch_authorization(self, p, request):
        last = None
        while True:
            auth, approval = await self.s.read(lambda tx: approvals.state_of(
                tx, p, request.authorization_id))
            message = pb.WatchAuthorizationResponse(authorization=self._authorization(p, auth))
            if approval is not None:
                message.approval.CopyFrom(pc.approval(approval))
            if message != last:
                yield message
                last = message
            if approval is None or approval["state"] != approvals.PENDING:
                return
            await self.s.changes.wait()

    def _authorization(self, p, auth: Record):
        """The authorization; the agent that asked also gets its voucher once approved."""
        token = ""
        if p.role == "agent" and authorizations.has_voucher(auth):
            token = authorizations.voucher_token(
                auth, self.s.keyring.signer_for(auth["voucher_key_id"]))
        return convert.authorization(auth, voucher=token)

    # -- alerts ---------------------------------------------------------------------------

    @unary
    async def ListAlerts(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: alerts.list_alerts(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListAlertsResponse(alerts=[pc.alert(a) for a in page["alerts"]],
                                     next_page_token=page["next_page_token"])

    @streaming
    async def WatchAlerts(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        with self.s.changes.watching():
            async for message in self._watch_alerts(p, request):
                yield message

    async def _watch_alerts(self, p, request):
        after = pc.alert_seq(request.after_alert_id) if request.after_alert_id else \
            await self.s.read(alerts.last_seq)
        first = True
        while True:
            found = await self.s.read(lambda tx, after=after: alerts.alerts_after(
                tx, p, request.wallet_id, after))
            if found or first:
                yield pb.WatchAlertsResponse(alerts=[pc.alert(a) for a in found])
                first = False
            if found:
                after = found[-1]["seq"]
            else:
                await self.s.changes.wait()

    # -- audit ----------------------------------------------------------------------------

    @unary
    async def Audit(self, request, context):
        p = await self.s.authenticate(context, "admin", "auditor")
        access.require_global_reader(p, "a ledger-wide audit")

        def run(tx):
            head = tx.get("meta", "journal_head") or {"seq": 0}
            return audit.check(tx), head["seq"]

        now = self.s.clock()
        # It walks the whole ledger: keep it off the event loop.
        problems, length = await asyncio.to_thread(self.s.store.read, run)
        return pb.AuditResponse(ok=not problems, problems=problems, journal_length=length,
                                audit_time=convert.timestamp(now))

    @unary
    async def ListJournalEntries(self, request, context):
        p = await self.s.authenticate(context, "admin", "auditor")
        access.require_global_reader(p, "the journal")
        page = await self.s.read(lambda tx: audit.list_journal(
            tx, request.page_size, request.page_token))
        return pb.ListJournalEntriesResponse(
            entries=[pc.journal_entry(e) for e in page["entries"]],
            next_page_token=page["next_page_token"])

    # -- disputes and refunds ----------------------------------------------------------------

    @unary
    async def DisputeReceipt(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "DisputeReceipt", request, lambda tx, now: (
            refunds.dispute(tx, p, request.receipt_id, request.reason, now)))
        return pb.DisputeReceiptResponse(dispute=pc.dispute(result))

    @unary
    async def ListDisputes(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: refunds.list_disputes(
            tx, p, request.page_size, request.page_token))
        return pb.ListDisputesResponse(disputes=[pc.dispute(d) for d in page["disputes"]],
                                       next_page_token=page["next_page_token"])

    @unary
    async def RefundReceipt(self, request, context):
        p = await self.s.authenticate(context, "admin")
        signer = self.s.receipt_keyring.signer  # refund receipts are receipts
        result = await self.s.mutate(p, "RefundReceipt", request, lambda tx, now: (
            refunds.refund(tx, p, request.receipt_id, request.amount, request.reason, now,
                           self.s.config, signer)))
        return pb.RefundReceiptResponse(refund=pc.refund(result))
