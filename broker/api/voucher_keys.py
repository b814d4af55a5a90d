"""VoucherKeyService: the public keys that verify vouchers and receipts. No auth."""

from __future__ import annotations

from ..v1 import voucher_key_service_pb2 as pb
from ..v1 import voucher_key_service_pb2_grpc as pb_grpc
from . import convert
from .base import Services, unary


class VoucherKeyServicer(pb_grpc.VoucherKeyServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def ListVoucherKeys(self, request, context):
        return pb.ListVoucherKeysResponse(keys=[
            pb.VoucherKey(key_id=k.key_id, public_key=k.public_key, active=k.active,
                          create_time=convert.timestamp(k.create_ms))
            for k in self.s.keyring.public_keys()])
