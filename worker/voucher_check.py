"""Offline voucher verification with the broker's public keys, cached by key id.

The cache asks the broker again only when a voucher names a key id it has not
seen (a key rotation), so verifying costs no round trip in the common case.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from nacl.signing import VerifyKey

from broker.v1 import voucher_key_service_pb2 as pb
from broker.v1 import voucher_key_service_pb2_grpc as pb_grpc
from common import vouchers
from common.clock import now_ms
from common.errors import BrokerError, Code


class VoucherVerifier:
    def __init__(self, fetch_keys: Callable[[], dict[str, bytes]],
                 clock: Callable[[], int] = now_ms):
        self._fetch = fetch_keys
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}

    def refresh(self) -> None:
        self._keys = {kid: VerifyKey(raw) for kid, raw in self._fetch().items()}

    def verify(self, token: str) -> vouchers.VoucherClaims:
        try:
            return vouchers.verify(token, self._keys, self._clock())
        except BrokerError as error:
            if error.reason != "VOUCHER_UNKNOWN_KEY":
                raise
        self.refresh()
        return vouchers.verify(token, self._keys, self._clock())


def grpc_key_fetcher(channel: grpc.Channel) -> Callable[[], dict[str, bytes]]:
    stub = pb_grpc.VoucherKeyServiceStub(channel)

    def fetch() -> dict[str, bytes]:
        try:
            response = stub.ListVoucherKeys(pb.ListVoucherKeysRequest(), timeout=10)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            # The agent learns the same as when redemption cannot reach the broker.
            raise BrokerError(Code.UNAVAILABLE, "BROKER_UNAVAILABLE",
                              "the broker cannot be reached to fetch its voucher keys; the "
                              "voucher was not redeemed and nothing was spent") from None
        return {key.key_id: key.public_key for key in response.keys}

    return fetch
