"""AdminService: owners, providers, API keys, treasury credits, ledger summary."""

from __future__ import annotations

import asyncio

from common import convert
from common.errors import denied, invalid

from ..core import audit, tenancy
from ..v1 import admin_service_pb2 as pb
from ..v1 import admin_service_pb2_grpc as pb_grpc
from .base import Services, unary


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def CreateOwner(self, request, context):
        p = await self.s.authenticate(context, "admin")
        owner = await self.s.mutate(p, "CreateOwner", request, lambda tx, now: (
            tenancy.create_owner(tx, request.display_name, now)))
        return pb.CreateOwnerResponse(owner_id=owner["owner_id"],
                                      treasury_account_id=owner["treasury_account_id"])

    @unary
    async def CreditTreasury(self, request, context):
        p = await self.s.authenticate(context, "admin")
        result = await self.s.mutate(p, "CreditTreasury", request, lambda tx, now: (
            tenancy.credit_treasury(tx, request.owner_id, request.amount, now)))
        return pb.CreditTreasuryResponse(
            transfer_id=result["transfer_id"],
            treasury_balance=convert.balance(result["treasury_balance"]))

    @unary
    async def CreateProvider(self, request, context):
        p = await self.s.authenticate(context, "admin")
        provider = await self.s.mutate(p, "CreateProvider", request, lambda tx, now: (
            tenancy.create_provider(tx, request.display_name, now)))
        return pb.CreateProviderResponse(provider_id=provider["provider_id"],
                                         payout_account_id=provider["payout_account_id"])

    @unary
    async def CreateApiKey(self, request, context):
        p = await self.s.authenticate(context, "admin")
        role = convert.ROLES.get(request.role)
        if role is None:
            raise invalid("role", "must be one of ROLE_ADMIN, ROLE_OWNER, ROLE_AGENT, "
                          "ROLE_WORKER, ROLE_AUDITOR")
        result = await self.s.mutate(p, "CreateApiKey", request, lambda tx, now: (
            tenancy.create_api_key(tx, role, now, owner_id=request.owner_id,
                                   wallet_id=request.wallet_id,
                                   provider_id=request.provider_id,
                                   description=request.description)))
        return pb.CreateApiKeyResponse(key_id=result["key_id"], api_key=result.get("api_key", ""))

    @unary
    async def RevokeApiKey(self, request, context):
        p = await self.s.authenticate(context, "admin")
        result = await self.s.mutate(p, "RevokeApiKey", request, lambda tx, now: (
            tenancy.revoke_api_key(tx, request.key_id, now)))
        return pb.RevokeApiKeyResponse(key_id=result["key_id"])

    @unary
    async def GetLedgerSummary(self, request, context):
        p = await self.s.authenticate(context, "admin", "auditor")
        if p.owner_id:  # ledger-wide totals would show other tenants' ids and amounts
            raise denied("the ledger summary needs an admin or a global auditor key",
                         "ROLE_NOT_ALLOWED")

        def summarize(tx):
            sums = audit.totals(tx)
            head = tx.get("meta", "journal_head") or {"seq": 0}
            return pb.GetLedgerSummaryResponse(
                debits_pending=sums["debits_pending"], credits_pending=sums["credits_pending"],
                debits_posted=sums["debits_posted"], credits_posted=sums["credits_posted"],
                account_count=sums["account_count"], transfer_count=sums["transfer_count"],
                journal_length=head["seq"], violations=audit.check(tx))

        # The audit walks the whole ledger: keep it off the event loop.
        return await asyncio.to_thread(self.s.store.read, summarize)
