"""`broker mandates keygen|public-key|sign` (the owner's side, offline) and
`broker audit --mandates` on a real data directory: charges covered by a valid mandate,
and those that were not, named."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from nacl.signing import SigningKey

from broker.core import authorizations, mandates, metering, policy, registry
from broker.datadir import DataDir, init
from common import mandates as fmt
from common import vouchers
from common.clock import now_ms

from .core.test_delegation import PRICES
from .core.world import World
from .test_vouchers_cli import cli


def test_keygen_and_sign_from_the_command_line(tmp_path):
    key_file = tmp_path / "mandate.key"
    made = cli("mandates", "keygen", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = base64.b64decode(made.stdout.rsplit(":", 1)[1].strip())
    assert fmt.key_id(public) in made.stdout
    assert cli("mandates", "public-key", "--key", str(key_file)).stdout.strip() == \
        base64.b64encode(public).decode()
    again = cli("mandates", "keygen", "--out", str(key_file))
    assert again.returncode == 1  # never overwrites a key
    signed = cli("mandates", "sign", "--key", str(key_file), "--wallet", "wal_1",
                 "--per-job", "500", "--total", "2000", "--model", "tiny", "--model", "big",
                 "--agent", "key_1", "--until", "2031-01-01T00:00:00Z")
    assert signed.returncode == 0, signed.stderr
    mandate = fmt.parse(signed.stdout.strip())
    fmt.verify(mandate, public)
    assert (mandate.wallet_id, mandate.agent_key_id, mandate.per_job, mandate.total,
            mandate.models, mandate.expire_ms) == ("wal_1", "key_1", 500, 2000,
                                                   ("big", "tiny"), 1_924_992_000_000)


def test_audit_mandates_names_the_charges_not_covered(tmp_path):
    data = DataDir(Path(tmp_path / "data"))
    init(data)
    w = World(store=data.open_store())
    try:
        w.now = now_ms()
        owner, wallet, agent, owner_p = w.tenant()
        key = SigningKey.generate()
        w.run(lambda tx: mandates.register_key(tx, owner_p, bytes(key.verify_key), w.now))
        provider, worker_p = w.provider()
        worker = w.run(lambda tx: registry.register(
            tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, w.now))

        def job(mandate: str) -> str:
            auth = w.run(lambda tx: authorizations.authorize(
                tx, agent, 1_000, {"model": "m"}, 60, w.now, w.config, w.signer.key_id,
                mandate=mandate))
            claims = vouchers.verify(authorizations.voucher_token(auth, w.signer),
                                     w.verify_keys(), w.now)
            ses = w.run(lambda tx: metering.redeem(tx, worker_p, claims, worker["worker_id"],
                                                   "cpu", "m", w.now, w.config))
            usage = {"gpu_ms": 200, "input_tokens": 0, "output_tokens": 0, "calls": 0,
                     "energy_mj": 0}
            w.run(lambda tx: metering.finish(tx, worker_p, ses["session_id"], usage, w.now,
                                             w.config, w.signer))
            return auth["authorization_id"]

        token = fmt.sign(key, wallet_id=wallet["wallet_id"], per_job=1_000, total=5_000,
                         expire_ms=w.now + 3_600_000, issued_ms=w.now)
        job(token)
        w.run(lambda tx: policy.set_policy(tx, owner_p, wallet["wallet_id"],
                                           {"require_mandate": True}, False, w.now))
        job(token)
    finally:
        w.store.close()
    covered = cli("audit", "--data-dir", str(data.root), "--mandates")
    assert covered.returncode == 0, covered.stdout + covered.stderr
    assert "2 charge(s); all covered by a valid mandate" in covered.stdout

    # A charge made without one (the policy did not require it then) is named.
    w = World(store=data.open_store())
    try:
        w.now = now_ms()
        w.run(lambda tx: policy.set_policy(tx, owner_p, wallet["wallet_id"], {}, True, w.now))
        bare = job("")
    finally:
        w.store.close()
    found = cli("audit", "--data-dir", str(data.root), "--mandates", "--from", "2000-01-01")
    assert found.returncode == 1
    assert f"authorization {bare}" in found.stdout and ": no mandate" in found.stdout
    assert "3 charge(s); 1 not covered by a valid mandate" in found.stdout
    # Another owner's charges, or a period before them: nothing to cover.
    other = cli("audit", "--data-dir", str(data.root), "--mandates", "--owner", "own_x")
    assert other.returncode == 0 and "0 charge(s)" in other.stdout
    before = cli("audit", "--data-dir", str(data.root), "--mandates", "--to", "2001-01-01")
    assert before.returncode == 0 and "0 charge(s)" in before.stdout
    # The ledger invariants (with each mandate's use) hold.
    assert cli("audit", "--data-dir", str(data.root)).returncode == 0
