"""Usage-report signatures checked outside the single writer (usage_signing.verify_ahead):
the op trusts the check only for the key the session still has."""

import pytest
from nacl.signing import SigningKey

from broker.core import authorizations, metering, registry
from common import usage_signing, vouchers
from common.errors import BrokerError

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0,
          "output_tokens_1k_price": 0, "call_price": 0}


def open_session(key: SigningKey):
    w = World()
    _, _, agent, _ = w.tenant()
    _, worker_p = w.provider()
    worker = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now, bytes(key.verify_key)))
    auth = w.run(lambda tx: authorizations.authorize(tx, agent, 10_000, {"model": "m"}, 60,
                                                     w.now, w.config, w.signer.key_id))
    claims = vouchers.verify(authorizations.voucher_token(auth, w.signer), w.verify_keys(), w.now)
    ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"], "cpu",
                                           "m", w.now, w.config))
    return w, worker_p, ses


def test_a_report_checked_ahead_is_recorded_with_its_signed_payload():
    key = SigningKey(b"\x05" * 32)
    w, worker_p, ses = open_session(key)
    usage = {"gpu_ms": 1000}
    message = usage_signing.payload(ses["session_id"], usage, seq=1)
    signature = key.sign(message).signature
    verified = usage_signing.verify_ahead(ses["usage_public_key"], message, signature)
    assert verified is not None
    decision = w.run(lambda tx: metering.record_usage(tx, worker_p, ses["session_id"], 1, usage,
                                                      w.now, signature, verified))
    assert decision.charged == 1000
    assert w.read(lambda tx: tx.get("sessions", ses["session_id"]))["signed_usage"]["payload"]


def test_a_check_against_another_key_is_not_trusted():
    key, other = SigningKey(b"\x05" * 32), SigningKey(b"\x06" * 32)
    w, worker_p, ses = open_session(key)
    usage = {"gpu_ms": 1000}
    message = usage_signing.payload(ses["session_id"], usage, seq=1)
    forged = other.sign(message).signature
    assert usage_signing.verify_ahead(ses["usage_public_key"], message, forged) is None
    wrong = usage_signing.verify_ahead(bytes(other.verify_key).hex(), message, forged)
    assert wrong is not None  # checked, but against a key that is not the session's
    with pytest.raises(BrokerError) as caught:
        w.run(lambda tx: metering.record_usage(tx, worker_p, ses["session_id"], 1, usage, w.now,
                                               forged, wrong))
    assert caught.value.reason == "USAGE_SIGNATURE_INVALID"
