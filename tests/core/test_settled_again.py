"""A settled session answered again (core/settled.py), on the pure core: a finish that
repeats the one that settled the session, and a resume of it, get the worker's copy of
the settlement field for field and move no money; every other finish is refused as
before."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from broker.core import authorizations, metering, registry
from common import usage_signing, vouchers
from common.errors import BrokerError

from .test_receipts import PRICES, Shop

USAGE = {"gpu_ms": 1500, "output_tokens": 40, "calls": 1}


def refused(fn) -> str:
    with pytest.raises(BrokerError) as caught:
        fn()
    return caught.value.reason


class Job:
    """One redeemed session of `shop`'s worker (signing with `key` when given)."""

    def __init__(self, shop: Shop, key: SigningKey | None = None):
        self.shop, self.key, w = shop, key, shop.w
        self.worker = shop.worker
        if key is not None:
            self.worker = w.run(lambda tx: registry.register(
                tx, shop.worker_p, "", "127.0.0.1:2", {"resource_class": "cpu",
                                                       "models": ["m"]},
                PRICES, w.now, bytes(key.verify_key)))
        self.auth = w.run(lambda tx: authorizations.authorize(
            tx, shop.agent, 100_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
        claims = vouchers.verify(authorizations.voucher_token(self.auth, w.signer),
                                 w.verify_keys(), w.now)
        self.ses = w.run(lambda tx: metering.redeem(tx, shop.worker_p, claims,
                                                    self.worker["worker_id"], "cpu", "m",
                                                    w.now, w.config))
        self.id = self.ses["session_id"]

    def signature(self, usage: dict) -> bytes:
        if self.key is None:
            return b""
        return usage_signing.sign(self.key, usage_signing.payload(self.id, usage, final=True))

    def finish(self, usage: dict, signature: bytes | None = None, principal=None):
        w = self.shop.w
        return w.run(lambda tx: metering.finish(
            tx, principal or self.shop.worker_p, self.id, usage, w.now, w.config, w.signer,
            self.signature(usage) if signature is None else signature))

    def resume(self, principal=None, worker_id=None):
        return self.shop.w.run(lambda tx: metering.resume(
            tx, principal or self.shop.worker_p, self.id,
            self.worker["worker_id"] if worker_id is None else worker_id))

    def balances(self) -> dict:
        w = self.shop.w
        return w.read(lambda tx: {k: v for k, v in tx.scan("accounts")})


@pytest.mark.parametrize("sealed,signed", [(False, False), (False, True), (True, True)])
def test_a_repeated_finish_and_a_resume_get_the_first_settlement(sealed, signed):
    shop = Shop()
    if sealed:
        shop.register_key()
    job = Job(shop, SigningKey.generate() if signed else None)
    first = job.finish(USAGE)
    before = job.balances()
    shop.w.now += 5_000  # later: the copy keeps the first settlement's time
    again = job.finish(dict(USAGE))
    assert again == first
    ses, copy = job.resume()
    assert copy == first and ses["state"] == "settled"
    assert first["outcome"] == "FINISHED" and first["usage"]["gpu_ms"] == 1500
    assert job.balances() == before  # nothing moved
    assert shop.w.violations() == []


def test_any_other_finish_of_a_settled_session_is_refused_as_before():
    shop = Shop()
    job = Job(shop, SigningKey.generate())
    job.finish(USAGE)
    _, stranger = shop.w.provider()
    before = job.balances()
    assert refused(lambda: job.finish({**USAGE, "gpu_ms": 1501})) == "SESSION_ALREADY_SETTLED"
    assert refused(lambda: job.finish({**USAGE, "gpu_ms": -1})) == "SESSION_ALREADY_SETTLED"
    # The same usage, not signed by the worker's usage key.
    assert refused(lambda: job.finish(USAGE, signature=b"\x00" * 64)) == \
        "SESSION_ALREADY_SETTLED"
    # Another provider's worker key does not see the session at all; nor does another
    # worker of the same provider resume it.
    assert refused(lambda: job.finish(USAGE, principal=stranger)) == "SESSION_NOT_FOUND"
    assert refused(lambda: job.resume(principal=stranger)) == "SESSION_NOT_FOUND"
    assert refused(lambda: job.resume(worker_id="wrk_other")) == "SESSION_NOT_FOUND"
    assert job.balances() == before


def test_a_session_the_broker_settled_is_resumed_with_it_but_not_finished_again():
    """Settled by the hold's expiry on the acknowledged usage: a resume learns it (with
    the receipt), a finish does not repeat anything and stays refused."""
    shop = Shop()
    job = Job(shop, SigningKey.generate())
    w = shop.w
    w.now = job.auth["expire_ms"] + 1
    assert w.run(lambda tx: metering.expire_due(tx, w.now, w.config, w.signer)) == 1
    _, copy = job.resume()
    assert copy["outcome"] == metering.HOLD_EXPIRED and copy["charged"] == 0
    assert copy["usage"]["gpu_ms"] == 0
    zero = dict.fromkeys(USAGE, 0)
    assert refused(lambda: job.finish(zero)) == "SESSION_ALREADY_SETTLED"


def test_a_sealed_settlement_without_signed_usage_cannot_be_rebuilt():
    """The worker had no usage key and the owner a receipt key: the usage lives only in
    the sealed receipt, so there is nothing to compare a finish with, or to answer a
    resume with: both are refused as before."""
    shop = Shop()
    shop.register_key()
    job = Job(shop)
    job.finish(USAGE)
    assert refused(lambda: job.finish(USAGE)) == "SESSION_ALREADY_SETTLED"
    assert refused(lambda: job.resume()) == "SESSION_ALREADY_SETTLED"
