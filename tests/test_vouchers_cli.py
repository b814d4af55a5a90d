"""`broker vouchers keygen` and `broker vouchers narrow`: a holder narrows a voucher
offline, from the command line, and the result verifies as a worker checks it."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys

from broker.core import authorizations
from common import vouchers

from .core.world import World


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_narrow_from_the_command_line(tmp_path):
    holder_file, next_file = tmp_path / "holder.key", tmp_path / "next.key"
    made = cli("vouchers", "keygen", "--out", str(holder_file))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(holder_file.stat().st_mode) == 0o600
    public = base64.b64decode(made.stdout.rsplit(":", 1)[1].strip())
    w = World()
    owner, wallet, agent, _ = w.tenant()
    auth = w.run(lambda tx: authorizations.authorize(
        tx, agent, 5_000, {"model": "m"}, 600, w.now, w.config, w.signer.key_id,
        holder_key=public))
    token = authorizations.voucher_token(auth, w.signer)
    narrowed = cli("vouchers", "narrow", "--key", str(holder_file), "--amount", "1200",
                   "--max-price", "call_price=9", "--next-key-out", str(next_file),
                   stdin=token)
    assert narrowed.returncode == 0, narrowed.stderr
    derived = narrowed.stdout.strip()
    claims = vouchers.verify(derived, w.verify_keys(), w.now)
    assert (claims.amount, claims.scope["model"], claims.scope["max_prices"]) == \
        (1200, "m", {"call_price": 9})
    assert claims.holder_key and stat.S_IMODE(next_file.stat().st_mode) == 0o600
    # Widening is refused with the reason, and the token is never echoed.
    wider = cli("vouchers", "narrow", "--key", str(next_file), "--amount", "1201",
                stdin=derived)
    assert wider.returncode == 1 and "VOUCHER_WIDENED" in wider.stderr
    assert derived not in wider.stderr and token not in wider.stderr
