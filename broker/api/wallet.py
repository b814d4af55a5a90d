"""WalletService: treasuries and agent micro-wallets."""

from __future__ import annotations

from common import convert

from ..core import access, wallets
from ..v1 import wallet_service_pb2 as pb
from ..v1 import wallet_service_pb2_grpc as pb_grpc
from .base import Services, unary

READERS = ("owner", "agent", "auditor", "admin")
OVERSEERS = ("owner", "auditor", "admin")  # an owner's whole tenant: not agents


class WalletServicer(pb_grpc.WalletServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def CreateWallet(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "CreateWallet", request, lambda tx, now: (
            wallets.create_wallet(tx, p.owner_id, request.display_name, request.cap,
                                  request.refill_target, now, self.s.config)))
        return pb.CreateWalletResponse(wallet=convert.wallet(result))

    @unary
    async def GetWallet(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        found = await self.s.read(lambda tx: wallets.view(
            tx, wallets.get_wallet(tx, p, request.wallet_id)))
        return pb.GetWalletResponse(wallet=convert.wallet(found))

    @unary
    async def ListWallets(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: wallets.list_wallets(
            tx, access.listed_owner(p, request.owner_id), request.page_size,
            request.page_token))
        return pb.ListWalletsResponse(wallets=[convert.wallet(w) for w in page["wallets"]],
                                      next_page_token=page["next_page_token"])

    @unary
    async def FundWallet(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "FundWallet", request, lambda tx, now: (
            wallets.fund_wallet(tx, p.owner_id, request.wallet_id, request.amount, now)))
        return pb.FundWalletResponse(
            transfer_id=result["transfer_id"],
            wallet_balance=convert.balance(result["wallet_balance"]),
            treasury_balance=convert.balance(result["treasury_balance"]))

    @unary
    async def GetBalance(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        result = await self.s.read(lambda tx: wallets.balance_of(tx, p, request.wallet_id))
        return pb.GetBalanceResponse(account_id=result["account_id"],
                                     balance=convert.balance(result["balance"]))

    @unary
    async def ListTransfers(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        page = await self.s.read(lambda tx: wallets.list_transfers(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListTransfersResponse(
            transfers=[convert.transfer(t) for t in page["transfers"]],
            next_page_token=page["next_page_token"])

    @unary
    async def FreezeWallet(self, request, context):
        return pb.FreezeWalletResponse(wallet=await self._set_frozen(request, context, True))

    @unary
    async def UnfreezeWallet(self, request, context):
        return pb.UnfreezeWalletResponse(wallet=await self._set_frozen(request, context, False))

    async def _set_frozen(self, request, context, frozen: bool):
        p = await self.s.authenticate(context, "owner")
        method = "FreezeWallet" if frozen else "UnfreezeWallet"
        result = await self.s.mutate(p, method, request, lambda tx, now: (
            wallets.set_frozen(tx, p.owner_id, request.wallet_id, frozen, now)))
        return convert.wallet(result)
