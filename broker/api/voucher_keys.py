"""VoucherKeyService: the public keys that verify vouchers (no auth), and rotation."""

from __future__ import annotations

from common import convert

from .. import keyring
from ..v1 import voucher_key_service_pb2 as pb
from ..v1 import voucher_key_service_pb2_grpc as pb_grpc
from .base import Services, unary


def voucher_key(k: keyring.PublicKey) -> pb.VoucherKey:
    key = pb.VoucherKey(key_id=k.key_id, public_key=k.public_key, active=k.active,
                        create_time=convert.timestamp(k.create_ms))
    if k.retire_ms:
        key.retire_time.CopyFrom(convert.timestamp(k.retire_ms))
    return key


class VoucherKeyServicer(pb_grpc.VoucherKeyServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def ListVoucherKeys(self, request, context):
        return pb.ListVoucherKeysResponse(keys=[
            voucher_key(k) for k in self.s.keyring.public_keys()])

    @unary
    async def RotateVoucherKey(self, request, context):
        p = await self.s.authenticate(context, "admin")
        ring = self.s.keyring
        made: list[keyring.Rotation] = []  # the key files are written once per request
        result = await self.s.mutate(p, "RotateVoucherKey", request, lambda tx, now: (
            keyring.rotate_voucher_key(tx, ring, now, self.s.config.max_ttl_ms, made)))
        new = {k.key_id: k for k in ring.public_keys()}.get(result["key_id"])
        return pb.RotateVoucherKeyResponse(
            key=voucher_key(new) if new else pb.VoucherKey(key_id=result["key_id"]),
            previous_key_id=result["previous_key_id"],
            previous_retire_time=convert.timestamp(result["previous_retire_ms"]))
