"""One broker per data directory and per port: a second one refuses to start, says why,
and leaves the first one (and its ledger) alone."""

import subprocess
import sys

from .broker_process import ROOT, BrokerProcess, free_port
from .conftest import WALLET_START


def second_broker(data_dir, listen: str) -> subprocess.CompletedProcess:
    """Run `broker serve --demo` expecting it to give up on its own (a hang fails)."""
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(data_dir),
         "--listen", listen, "--demo"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_second_broker_on_the_same_data_dir_refuses(h, tmp_path):
    h.agent.authorize(1_000, ttl_seconds=300)
    before = h.snapshot()
    other_port = f"127.0.0.1:{free_port()}"
    result = second_broker(h.broker.data_dir, other_port)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(h.broker.data_dir) in output
    assert "locked by another broker" in output
    assert f"pid {h.broker.proc.pid}" in output
    assert "Traceback" not in output
    # The first broker is untouched and still serving the same ledger.
    assert h.broker.proc.poll() is None
    assert h.snapshot() == before
    assert h.agent.balance().pending == 1_000


def test_second_broker_on_the_same_port_refuses(h, tmp_path):
    before = h.snapshot()
    result = second_broker(tmp_path / "other-data", h.target)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert h.target in output
    assert "is another broker running?" in output
    assert "Traceback" not in output
    assert h.broker.proc.poll() is None
    assert h.snapshot() == before
    assert h.agent.balance().posted == WALLET_START
    # Its own data directory was released: a broker can start there on a free port.
    third = BrokerProcess(tmp_path / "other-data").start()
    try:
        assert third.credentials["wallet_id"] != h.wallet_id
    finally:
        assert third.stop() == 0


def test_data_dir_is_free_again_after_a_crash(h):
    """flock dies with the process: after SIGKILL a new broker may start at once."""
    h.broker.kill()
    h.broker.start()
    assert h.agent.balance().posted == WALLET_START
