"""The worker's voucher key cache: made-up key ids cost a bounded number of fetches."""

from nacl.signing import SigningKey

from broker.keyring import key_id_for
from common import vouchers
from common.errors import BrokerError
from worker import voucher_check
from worker.voucher_check import VoucherVerifier

CLAIMS = vouchers.VoucherClaims(voucher_id="v" * 24, amount=1000, scope={}, issued_ms=0,
                                expire_ms=2**40)


class Broker:
    """The keys the broker publishes, and how often it was asked."""

    def __init__(self):
        self.keys: dict[str, bytes] = {}
        self.fetches = 0

    def new_key(self) -> vouchers.Signer:
        signing = SigningKey.generate()
        key_id = key_id_for(signing.verify_key)
        self.keys[key_id] = bytes(signing.verify_key)
        return vouchers.Signer(key_id, signing)

    def fetch(self) -> dict[str, bytes]:
        self.fetches += 1
        return dict(self.keys)


def reason(verifier: VoucherVerifier, token: str) -> str:
    try:
        verifier.verify(token)
    except BrokerError as error:
        return error.reason
    return "OK"


def test_unknown_key_ids_are_remembered_and_refreshes_rate_limited():
    broker, now = Broker(), [0.0]
    verifier = VoucherVerifier(broker.fetch, clock=lambda: 1000, monotonic=lambda: now[0])
    first = broker.new_key()
    assert reason(verifier, vouchers.issue(first, CLAIMS)) == "OK" and broker.fetches == 1
    mallory = SigningKey.generate()
    forged = [vouchers.issue(vouchers.Signer(f"kforged{i}", mallory), CLAIMS) for i in range(20)]
    assert {reason(verifier, token) for token in forged * 2} == {"VOUCHER_UNKNOWN_KEY"}
    assert broker.fetches == voucher_check.REFRESH_BURST  # the first fetch, and 2 more
    # A key rotation while the refreshes are spent: the new key is fetched once one is
    # back, and a key id found unknown is not asked about again until its time is up.
    rotated = vouchers.issue(broker.new_key(), CLAIMS)
    assert reason(verifier, rotated) == "VOUCHER_UNKNOWN_KEY"
    now[0] += voucher_check.REFRESH_EVERY_S
    assert reason(verifier, forged[0]) == "VOUCHER_UNKNOWN_KEY"  # remembered: no fetch
    assert reason(verifier, rotated) == "OK" and broker.fetches == 4
    now[0] += voucher_check.UNKNOWN_TTL_S
    assert reason(verifier, forged[0]) == "VOUCHER_UNKNOWN_KEY" and broker.fetches == 5


def test_the_unknown_key_ids_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(voucher_check, "UNKNOWN_MAX", 3)
    monkeypatch.setattr(voucher_check, "REFRESH_BURST", 100)
    broker = Broker()
    verifier = VoucherVerifier(broker.fetch, clock=lambda: 1000, monotonic=lambda: 0.0)
    mallory = SigningKey.generate()
    for i in range(10):
        reason(verifier, vouchers.issue(vouchers.Signer(f"k{i}", mallory), CLAIMS))
    assert list(verifier._unknown) == ["k7", "k8", "k9"]


def test_while_the_broker_cannot_be_reached_a_new_key_is_unavailable_not_unknown():
    """Refreshes that fail to reach the broker spend the burst like any other; until one
    gets through, a voucher whose key is not cached yet is answered UNAVAILABLE (try
    again), never VOUCHER_UNKNOWN_KEY (a refusal for good) for a key that may be real."""
    broker, now, down = Broker(), [0.0], [True]

    def fetch() -> dict[str, bytes]:
        if down[0]:
            broker.fetches += 1
            raise voucher_check.broker_unreachable()
        return broker.fetch()

    verifier = VoucherVerifier(fetch, clock=lambda: 1000, monotonic=lambda: now[0])
    token = vouchers.issue(broker.new_key(), CLAIMS)
    reasons = [reason(verifier, token) for _ in range(voucher_check.REFRESH_BURST + 3)]
    assert reasons == ["BROKER_UNAVAILABLE"] * len(reasons)
    assert broker.fetches == voucher_check.REFRESH_BURST  # still rate-limited
    down[0] = False
    assert reason(verifier, token) == "BROKER_UNAVAILABLE"  # no refresh left yet
    now[0] += voucher_check.REFRESH_EVERY_S
    assert reason(verifier, token) == "OK"
    # Once the broker answered, a key id it does not know is refused as before.
    forged = vouchers.issue(vouchers.Signer("kforged", SigningKey.generate()), CLAIMS)
    now[0] += voucher_check.REFRESH_EVERY_S
    assert reason(verifier, forged) == "VOUCHER_UNKNOWN_KEY"
