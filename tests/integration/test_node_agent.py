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

from broker.client import BrokerClient
from common import usage_signing
from worker.v1 import worker_service_pb2 as worker_pb

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
    # Checked by verify.js from docs/wire.md: the voucher, the fee, the worker's usage.
    voucher = line(r"^voucher (vch_\w+) verified with broker key (k\w+): amount (\d+), "
                   r"worker (\S+)$", out)
    assert voucher.group(2) in world.agent.voucher_keys()
    assert voucher.groups()[2:] == ("150000", world.worker_id)
    fee_bps = world.agent.platform_fee_bps()
    assert fee_bps > 0 and receipt.platform_fee == receipt.charged * fee_bps // 10_000
    assert line(r"^fee split verified: (\d+) is (\d+) bps of (\d+), rounded down$",
                out).groups() == (str(receipt.platform_fee), str(fee_bps), str(receipt.charged))
    usage = line(r"^worker usage signature verified: (\d+) ms, (\d+) tokens out cost (\d+)$",
                 out)
    assert usage.groups() == (str(receipt.usage.gpu_ms), "12", str(receipt.charged))

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


VERIFY = """
const v = require(process.argv[1]);
const d = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const b = (x) => Buffer.from(x, 'base64');
const keys = (ks) => ks.map(([key_id, k]) => ({ key_id, public_key: b(k) }));
const r = { ...d.receipt, signed_payload: b(d.receipt.signed_payload),
            signature: b(d.receipt.signature) };
const out = {};
const attempt = (name, f) => { try { f(); out[name] = 'ok'; } catch (e) {
  out[name] = e instanceof v.VerifyError ? 'refused' : String(e); } };
attempt('voucher', () => v.verifyVoucher(d.voucher, keys(d.voucher_keys), Date.now()));
attempt('voucher_other_amount', () => v.verifyVoucher(d.forged_voucher, keys(d.voucher_keys),
  Date.now()));
attempt('voucher_expired', () => v.verifyVoucher(d.voucher, keys(d.voucher_keys), 4e12));
attempt('receipt', () => v.verifyReceipt(r, keys(d.receipt_keys)));
attempt('receipt_other_charge', () => v.verifyReceipt({ ...r, charged: '1' },
  keys(d.receipt_keys)));
attempt('fee', () => v.verifyFee(v.verifyReceipt(r, keys(d.receipt_keys)), d.fee_bps));
attempt('fee_other_rate', () => v.verifyFee(v.verifyReceipt(r, keys(d.receipt_keys)),
  d.other_fee_bps));
attempt('usage', () => v.verifyWorkerUsage(b(d.usage_payload), b(d.usage_signature),
  b(d.usage_key), d.usage, b(d.usage_batch)));
attempt('usage_other_worker', () => v.verifyWorkerUsage(b(d.usage_payload),
  b(d.usage_signature), b(d.receipt_keys[0][1]), d.usage, b(d.usage_batch)));
attempt('usage_other_tokens', () => v.verifyWorkerUsage(b(d.usage_payload),
  b(d.usage_signature), b(d.usage_key), { ...d.usage, output_tokens: 1 }, b(d.usage_batch)));
attempt('usage_without_batch', () => v.verifyWorkerUsage(b(d.usage_payload),
  b(d.usage_signature), b(d.usage_key), d.usage));
attempt('usage_not_in_batch', () => v.verifyWorkerUsage(
  Buffer.from(b(d.usage_payload).toString().replace('"final":true', '"final":true ')),
  b(d.usage_signature), b(d.usage_key), d.usage, b(d.usage_batch)));
console.log(JSON.stringify(out));
"""


def test_verify_js_accepts_what_the_broker_signs_and_refuses_any_change(world, node_agent):
    """verify.js (written from docs/wire.md) against a real voucher, receipt and signed
    usage, then each with one thing changed."""
    import base64

    from google.protobuf.json_format import MessageToDict

    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    offer = next(o for o in world.agent.list_offers() if o.worker_id == world.worker_id)
    auth = world.authorize(40_000, model="tiny-lm")
    claims, signature = auth.voucher.split(".")[2:]
    forged_claims = base64.urlsafe_b64encode(base64.urlsafe_b64decode(claims + "==").replace(
        b'"amt":40000', b'"amt":90000')).rstrip(b"=").decode()
    forged = ".".join([*auth.voucher.split(".")[:2], forged_claims, signature])
    assert forged != auth.voucher
    run = world.execute(auth.voucher, worker_pb.Job(generate=worker_pb.GenerateJob(
        model="tiny-lm", prompt="Hi", max_new_tokens=4)))
    assert run.events[-1].result.status == worker_pb.JOB_STATUS_COMPLETED
    receipt = world.wait_settled(auth.authorization_id)
    # A small charge floors to the same fee at nearby rates: pick one whose fee differs.
    assert receipt.charged > 0
    other_fee_bps = next(bps for bps in range(world.agent.platform_fee_bps() + 1, 10_001)
                         if receipt.charged * bps // 10_000 != receipt.platform_fee)
    # The worker daemon meters on MeterWorker and signs the final usage with its batch.
    assert usage_signing.in_batch(receipt.worker_usage_payload, receipt.worker_usage_batch)
    data = {"voucher": auth.voucher, "forged_voucher": forged,
            "voucher_keys": [[k, b64(v)] for k, v in world.agent.voucher_keys().items()],
            "receipt": {**MessageToDict(receipt, preserving_proto_field_name=True),
                        "signed_payload": b64(receipt.signed_payload),
                        "signature": b64(receipt.signature)},
            "receipt_keys": [[k, b64(v)] for k, v in
                             world.agent.receipt_signing_keys().items()],
            "fee_bps": world.agent.platform_fee_bps(),
            "other_fee_bps": other_fee_bps,
            "usage_payload": b64(receipt.worker_usage_payload),
            "usage_signature": b64(receipt.worker_usage_signature),
            "usage_batch": b64(receipt.worker_usage_batch),
            "usage_key": b64(offer.usage_public_key),
            "usage": MessageToDict(receipt.usage, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)}
    node = shutil.which("node")
    done = subprocess.run([node, "-e", VERIFY, str(AGENT_DIR / "verify.js")],
                          input=json.dumps(data), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "voucher": "ok", "voucher_other_amount": "refused", "voucher_expired": "refused",
        "receipt": "ok", "receipt_other_charge": "refused",
        "fee": "ok", "fee_other_rate": "refused",
        "usage": "ok", "usage_other_worker": "refused", "usage_other_tokens": "refused",
        "usage_without_batch": "refused", "usage_not_in_batch": "refused"}


def test_checks_its_charge_from_a_receipt_sealed_to_the_owner(world, node_agent):
    """Once the owner registers a receipt key, GetReceipt keeps the itemised part sealed,
    and agent.js still checks the charge from the broker's receipt alone: the worker's
    signed usage and the prices beside the seal (docs/wire.md)."""
    from nacl.public import PrivateKey

    owner = BrokerClient(world.broker.target, world.creds["owner_api_key"])
    owner.register_receipt_key(bytes(PrivateKey.generate().public_key))
    done = node_agent("--broker", world.broker.target, "--credentials",
                      str(world.broker.credentials_path), "--amount", "150000",
                      "--tokens", "8", "--prompt", "Sealed ")
    assert done.returncode == 0, done.stdout + done.stderr
    authorization_id = line(r"^authorized \d+: (auth_\w+), ", done.stdout).group(1)
    receipt = world.agent.get_receipt(authorization_id)
    assert receipt.sealed_itemised and not receipt.HasField("usage") and not receipt.outcome
    assert receipt.worker_usage_signature and receipt.HasField("prices")
    signed = json.loads(receipt.worker_usage_payload)
    assert (signed["final"], signed["usage"]["output_tokens"]) == (True, 8)
    usage = line(r"^worker usage signature verified: (\d+) ms, (\d+) tokens out cost (\d+)$",
                 done.stdout)
    assert usage.groups() == (str(signed["usage"]["gpu_ms"]), "8", str(receipt.charged))
    assert receipt.charged > 0
