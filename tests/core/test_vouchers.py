import pytest
from nacl.signing import SigningKey

from common import vouchers
from common.errors import BrokerError
from common.vouchers import Signer, VoucherClaims, b64d, b64e

SIGNER = Signer("k1", SigningKey(b"\x07" * 32))
KEYS = {"k1": SIGNER.signing_key.verify_key}
CLAIMS = VoucherClaims("vch_1", 5_000, {"model": "tiny-lm", "max_prices": {"call_price": 3}},
                       100, 10_000)


def reason_of(token, now=500, keys=KEYS):
    with pytest.raises(BrokerError) as err:
        vouchers.verify(token, keys, now)
    assert "v1." not in err.value.message  # the token is never echoed
    return err.value.reason


def test_round_trip_and_no_identity_in_claims():
    token = vouchers.issue(SIGNER, CLAIMS)
    claims = vouchers.verify(token, KEYS, 500)
    assert (claims.voucher_id, claims.amount, claims.key_id) == ("vch_1", 5_000, "k1")
    assert claims.scope == {"model": "tiny-lm", "max_prices": {"call_price": 3}}
    assert set(claims.to_json()) == {"vid", "amt", "scope", "iat", "exp"}


def test_signing_is_deterministic():
    assert vouchers.issue(SIGNER, CLAIMS) == vouchers.issue(SIGNER, CLAIMS)


def test_expired():
    assert reason_of(vouchers.issue(SIGNER, CLAIMS), now=10_000) == "VOUCHER_EXPIRED"


def test_forged_with_another_key_under_the_real_key_id():
    forged = vouchers.issue(Signer("k1", SigningKey(b"\x08" * 32)), CLAIMS)
    assert reason_of(forged) == "VOUCHER_INVALID_SIGNATURE"


def test_altered_claims():
    version, kid, claims, sig = vouchers.issue(SIGNER, CLAIMS).split(".")
    raised = b64d(claims).replace(b"5000", b"9000")
    assert reason_of(".".join([version, kid, b64e(raised), sig])) == "VOUCHER_INVALID_SIGNATURE"


def test_unknown_key_and_version_and_garbage():
    token = vouchers.issue(SIGNER, CLAIMS)
    assert reason_of(token, keys={}) == "VOUCHER_UNKNOWN_KEY"
    assert reason_of("v2" + token[2:]) == "VOUCHER_VERSION_UNSUPPORTED"
    for junk in ["", "abc", "a.b.c", "v1.k1.!!!.???", "v1.k1." + "A" * 5000 + ".x", "é.k1.a.b"]:
        assert reason_of(junk) in ("VOUCHER_MALFORMED", "VOUCHER_INVALID_SIGNATURE")
