"""StatementService: owners' receipt keys, receipts, statements, payouts, and the
receipt-signing keys."""

from __future__ import annotations

import base64

from google.protobuf.timestamp_pb2 import Timestamp

from common import convert

from .. import keyring
from ..core import access, receipts, statements
from ..store.base import Record
from ..v1 import statement_service_pb2 as pb
from ..v1 import statement_service_pb2_grpc as pb_grpc
from .base import Services, unary

GRANULARITIES = {pb.STATEMENT_GRANULARITY_UNSPECIFIED: 0,
                 pb.STATEMENT_GRANULARITY_HOUR: receipts.HOUR_MS,
                 pb.STATEMENT_GRANULARITY_DAY: receipts.DAY_MS}
GRANULARITY_NAMES = {ms: name for name, ms in GRANULARITIES.items() if ms}


def ms(ts: Timestamp) -> int:
    # Read the fields: Timestamp's own conversions reject some out-of-range values.
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def granularity(value: int) -> int:
    # An unknown enum number maps to a value the core refuses with INVALID_ARGUMENT.
    return GRANULARITIES.get(value, -1)


def receipt_key(r: Record) -> pb.ReceiptKey:
    return pb.ReceiptKey(key_id=r["key_id"], public_key=base64.b64decode(r["public_key"]),
                         create_time=convert.timestamp(r["create_ms"]))


def signing_key(k: keyring.PublicKey) -> pb.ReceiptSigningKey:
    key = pb.ReceiptSigningKey(key_id=k.key_id, public_key=k.public_key, active=k.active,
                               create_time=convert.timestamp(k.create_ms))
    if k.retire_ms:
        key.retire_time.CopyFrom(convert.timestamp(k.retire_ms))
    return key


def signed_fields(s: Record) -> dict:
    return {"key_id": s["key_id"], "signature": base64.b64decode(s["signature"]),
            "signed_payload": base64.b64decode(s["signed_payload"])}


def statement(s: Record) -> pb.Statement:
    return pb.Statement(
        owner_id=s["owner_id"], period_start=convert.timestamp(s["period_start_ms"]),
        period_end=convert.timestamp(s["period_end_ms"]),
        granularity=GRANULARITY_NAMES[s["granularity_ms"]],
        wallets=[pb.WalletTotal(**w) for w in s["wallets"]],
        payment_models=[pb.PaymentModelTotal(**m) for m in s["payment_models"]],
        total_charged=s["total_charged"], total_released=s["total_released"],
        job_count=s["job_count"], total_refunded=s["total_refunded"],
        annex=base64.b64decode(s["annex"]),
        receipt_key_id=s["receipt_key_id"], **signed_fields(s))


def payout_statement(s: Record) -> pb.PayoutStatement:
    return pb.PayoutStatement(
        provider_id=s["provider_id"], period_start=convert.timestamp(s["period_start_ms"]),
        period_end=convert.timestamp(s["period_end_ms"]),
        granularity=GRANULARITY_NAMES[s["granularity_ms"]],
        periods=[pb.PayoutPeriod(
            period_start=convert.timestamp(p["period_start_ms"]),
            period_end=convert.timestamp(p["period_end_ms"]), charged=p["charged"],
            payout=p["payout"], platform_fee=p["platform_fee"], job_count=p["job_count"],
            refunded_payout=p["refunded_payout"], refunded_fee=p["refunded_fee"])
            for p in s["periods"]],
        total_charged=s["total_charged"], total_payout=s["total_payout"],
        total_platform_fee=s["total_platform_fee"], job_count=s["job_count"],
        total_refunded_payout=s["total_refunded_payout"],
        total_refunded_fee=s["total_refunded_fee"], **signed_fields(s))


class StatementServicer(pb_grpc.StatementServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def RegisterReceiptKey(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "RegisterReceiptKey", request, lambda tx, now: (
            receipts.register_key(tx, p, request.public_key, now)))
        return pb.RegisterReceiptKeyResponse(receipt_key=receipt_key(result))

    @unary
    async def GetReceiptKey(self, request, context):
        p = await self.s.authenticate(context, "owner", "auditor", "admin")
        found = await self.s.read(lambda tx: receipts.get_key(
            tx, access.listed_owner(p, request.owner_id)))
        return pb.GetReceiptKeyResponse(receipt_key=receipt_key(found))

    @unary
    async def ListReceipts(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent", "auditor", "admin")
        page = await self.s.read(lambda tx: receipts.list_receipts(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListReceiptsResponse(receipts=[convert.receipt(r) for r in page["receipts"]],
                                       next_page_token=page["next_page_token"])

    @unary
    async def GetStatement(self, request, context):
        p = await self.s.authenticate(context, "owner", "auditor", "admin")
        signer = self.s.receipt_keyring.signer
        found = await self.s.read(lambda tx: statements.owner_statement(
            tx, p, request.owner_id, ms(request.period_start), ms(request.period_end),
            granularity(request.granularity), request.include_annex, self.s.config, signer))
        return pb.GetStatementResponse(statement=statement(found))

    @unary
    async def GetPayoutStatement(self, request, context):
        p = await self.s.authenticate(context, "worker", "auditor", "admin")
        signer = self.s.receipt_keyring.signer
        found = await self.s.read(lambda tx: statements.payout_statement(
            tx, p, request.provider_id, ms(request.period_start), ms(request.period_end),
            granularity(request.granularity), self.s.config, signer))
        return pb.GetPayoutStatementResponse(statement=payout_statement(found))

    @unary
    async def ListReceiptSigningKeys(self, request, context):
        return pb.ListReceiptSigningKeysResponse(keys=[
            signing_key(k) for k in self.s.receipt_keyring.public_keys(include_retired=True)])

    @unary
    async def RotateReceiptSigningKey(self, request, context):
        p = await self.s.authenticate(context, "admin")
        ring = self.s.receipt_keyring
        made: list[keyring.Rotation] = []  # the key files are written once per request
        result = await self.s.mutate(p, "RotateReceiptSigningKey", request, lambda tx, now: (
            keyring.rotate_receipt_key(tx, ring, now, made)))
        keys = {k.key_id: k for k in ring.public_keys(include_retired=True)}
        return pb.RotateReceiptSigningKeyResponse(key=signing_key(keys[result["key_id"]]),
                                                  previous_key_id=result["previous_key_id"])
