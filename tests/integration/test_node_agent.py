"""The Node.js agent (examples/node-agent: grpc-js, the .proto files loaded at run time)
against a real broker and a real worker: discover, authorize, execute, receipt, balance;
and on failure, a non-zero exit with the gRPC code and the ErrorInfo reason."""

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

from .broker_process import ROOT
from .conftest import WALLET_START, balance_tuple, worker_world

AGENT_DIR = ROOT / "examples" / "node-agent"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with worker_world(tmp_path_factory.mktemp("node-agent")) as w:
        yield w


@pytest.fixture(scope="module")
def node_agent():
    """Runs agent.js; installs the locked packages first where `make test` has not."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: the Node.js agent needs Node.js 18 or newer")
    if not (AGENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(["make", "--no-print-directory", "node-deps"], cwd=ROOT, check=True,
                       timeout=600)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([node, str(AGENT_DIR / "agent.js"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    return run


def line(pattern: str, text: str) -> re.Match:
    found = re.search(pattern, text, re.M)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return found


def balance_of(pattern: str, text: str) -> tuple[int, int, int]:
    found = line(pattern + r": posted (\d+), pending (\d+), available (\d+)$", text)
    return tuple(int(found.group(i)) for i in (1, 2, 3))


def test_buys_a_job_and_reports_the_receipt_and_balance(world, node_agent):
    credentials = str(world.broker.credentials_path)
    done = node_agent("--broker", world.broker.target, "--credentials", credentials,
                      "--amount", "150000", "--tokens", "12", "--prompt", "Hello from Node ")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    wallet = world.creds["wallet_id"]

    assert balance_of(f"^wallet {wallet} before", out) == (WALLET_START, 0, WALLET_START)
    offer = line(r"^offer: worker (\S+) at (\S+) ", out)
    assert offer.groups() == (world.worker_id, world.worker.target)
    authorized = line(r"^authorized (\d+): (auth_\w+), expires ", out)
    assert authorized.group(1) == "150000"
    authorization_id = authorized.group(2)
    assert line(r"^job \w+ accepted: budget (\d+), meter \w+$", out).group(1) == "150000"
    assert "Hello from Node " in out  # the prompt, then the tokens as they stream
    job = line(r"^job (\w+): (\d+) tokens in, (\d+) out, (\d+) ms compute, (\d+) call", out)
    assert job.group(1) == "JOB_STATUS_COMPLETED"
    assert (int(job.group(2)), int(job.group(3)), int(job.group(5))) == (16, 12, 1)

    # The receipt the agent printed is the broker's, read here independently.
    receipt = world.agent.get_receipt(authorization_id)
    printed = line(r"^receipt (rcpt_\w+): held (\d+), charged (\d+) \(worker (\d+) \+ fee (\d+)\),"
                   r" released (\d+), outcome (\w+)$", out)
    assert printed.groups() == (
        receipt.receipt_id, str(receipt.held), str(receipt.charged), str(receipt.worker_payout),
        str(receipt.platform_fee), str(receipt.released), receipt.outcome)
    assert receipt.held == 150_000 and 0 < receipt.charged < receipt.held
    assert (receipt.usage.input_tokens, receipt.usage.output_tokens) == (16, 12)
    assert line(r"^receipt signature verified with broker key (\S+)$", out).group(1) == \
        receipt.key_id

    # The balance after: settled, nothing pending, refilled to the target; as the broker says.
    after = balance_of(f"^wallet {wallet} after", out)
    assert after == balance_tuple(world.h.wallet())
    assert after == (WALLET_START, 0, WALLET_START)
    assert world.violations() == []


def test_a_refused_authorization_exits_1_with_the_reason(world, node_agent):
    before = world.h.snapshot()
    done = node_agent("--broker", world.broker.target, "--credentials",
                      str(world.broker.credentials_path), "--amount", "50000000")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "node-agent: Authorize failed: FAILED_PRECONDITION (9): " in done.stderr
    assert "reason INSUFFICIENT_FUNDS (domain broker.v1)" in done.stderr
    assert "quota account:" in done.stderr  # the QuotaFailure detail, decoded too
    assert "authorized" not in done.stdout
    assert world.h.snapshot() == before


def test_a_bad_api_key_exits_1_with_the_reason(world, node_agent, tmp_path):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({**world.creds, "agent_api_key": "not-a-key"}))
    done = node_agent("--broker", world.broker.target, "--credentials", str(credentials))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "node-agent: GetBalance failed: UNAUTHENTICATED (16): " in done.stderr
    assert "reason API_KEY_INVALID (domain broker.v1)" in done.stderr
    assert done.stdout == ""


def test_a_silent_server_times_out(world, node_agent):
    """A peer that accepts the connection and never answers: the deadline ends the run."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        done = node_agent("--broker", target, "--credentials",
                          str(world.broker.credentials_path), "--timeout", "2")
        elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DEADLINE_EXCEEDED (4)" in done.stderr
    assert elapsed < 60
