"""Offline voucher verification with the broker's public keys, cached by key id.

The cache asks the broker again only when a voucher names a key id it has not
seen (a key rotation), so verifying costs no round trip in the common case. Anyone who
reaches the worker can send vouchers with made-up key ids, so those asks are bounded:
a key id the broker did not know after a refresh is refused offline for a while
(key ids are hashes of the public keys, so a real new key cannot be guessed and
poisoned ahead), and refreshes are rate-limited (a small burst, then one per interval).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from nacl.signing import VerifyKey

from broker.v1 import voucher_key_service_pb2 as pb
from broker.v1 import voucher_key_service_pb2_grpc as pb_grpc
from common import vouchers
from common.clock import now_ms
from common.errors import BrokerError, Code

from .broker_link import connection_lost

UNKNOWN_TTL_S = 600.0  # how long a key id the broker did not know is refused offline
UNKNOWN_MAX = 1024  # key ids remembered as unknown (the oldest are forgotten first)
REFRESH_BURST = 3  # refreshes allowed at once...
REFRESH_EVERY_S = 10.0  # ...and one more each this many seconds


class VoucherVerifier:
    def __init__(self, fetch_keys: Callable[[], dict[str, bytes]],
                 clock: Callable[[], int] = now_ms,
                 monotonic: Callable[[], float] = time.monotonic):
        self._fetch = fetch_keys
        self._clock = clock
        self._monotonic = monotonic
        self._keys: dict[str, VerifyKey] = {}
        self._lock = threading.Lock()  # (verify runs in worker threads)
        self._unknown: dict[str, float] = {}  # key id -> when the broker did not know it
        self._tokens = float(REFRESH_BURST)
        self._tokens_at = monotonic()
        self._unreachable = False  # the last refresh could not reach the broker

    def refresh(self) -> None:
        try:
            fetched = self._fetch()
        except BrokerError as error:
            self._unreachable = error.reason == "BROKER_UNAVAILABLE"
            raise
        self._unreachable = False
        self._keys = {kid: VerifyKey(raw) for kid, raw in fetched.items()}

    def verify(self, token: str) -> vouchers.VoucherClaims:
        try:
            return vouchers.verify(token, self._keys, self._clock())
        except BrokerError as error:
            if error.reason != "VOUCHER_UNKNOWN_KEY":
                raise
            key_id = error.metadata.get("key_id", "")
        with self._lock:
            if key_id not in self._keys:
                if self._may_refresh(key_id):
                    self.refresh()
                    if key_id not in self._keys:
                        self._remember_unknown(key_id)
                elif self._unreachable and key_id not in self._unknown:
                    # The broker could not be asked: the key may well be real, so the
                    # caller hears "try again", not "unknown key" (a refusal for good).
                    raise broker_unreachable()
        return vouchers.verify(token, self._keys, self._clock())

    def _may_refresh(self, key_id: str) -> bool:
        now = self._monotonic()
        seen = self._unknown.get(key_id)
        if seen is not None and now - seen < UNKNOWN_TTL_S:
            return False
        self._tokens = min(float(REFRESH_BURST),
                           self._tokens + (now - self._tokens_at) / REFRESH_EVERY_S)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _remember_unknown(self, key_id: str) -> None:
        self._unknown.pop(key_id, None)
        self._unknown[key_id] = self._monotonic()
        while len(self._unknown) > UNKNOWN_MAX:
            del self._unknown[next(iter(self._unknown))]


def grpc_key_fetcher(channel: grpc.Channel) -> Callable[[], dict[str, bytes]]:
    stub = pb_grpc.VoucherKeyServiceStub(channel)

    def fetch() -> dict[str, bytes]:
        try:
            response = stub.ListVoucherKeys(pb.ListVoucherKeysRequest(), timeout=10)
        except grpc.RpcError as error:
            if not (connection_lost(error) or
                    error.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise broker_unreachable() from None
        return {key.key_id: key.public_key for key in response.keys}

    return fetch


def broker_unreachable() -> BrokerError:
    # The agent learns the same as when redemption cannot reach the broker.
    return BrokerError(Code.UNAVAILABLE, "BROKER_UNAVAILABLE",
                       "the broker cannot be reached to fetch its voucher keys; the voucher "
                       "was not redeemed and nothing was spent")
