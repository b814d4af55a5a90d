"""README.md, run as a new user would: `make run` on ports and a data directory that are
not its defaults, then every shell block pasted in order (the grpcurl walkthrough, the
Node.js agent, quotes, receipts and statements, key rotation) with LISTEN,
WORKER_LISTEN and DATA set, and the Python agent block; each answer is checked."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from broker.client import BrokerClient, BrokerClientError
from broker.core.idempotency import MAX_REQUEST_ID

from . import doc_blocks
from .broker_process import ROOT, free_port
from .conftest import Client
from .test_grpcurl import SERVICES

README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
DEFAULTS = ("127.0.0.1:50051", "127.0.0.1:50052", "9464", "9465")


@dataclass
class LocalStack:
    """What `make run` started, and the variables the README's blocks read."""

    proc: subprocess.Popen
    env: dict[str, str]
    log: Path

    @property
    def data(self) -> Path:
        return Path(self.env["DATA"])

    @property
    def credentials(self) -> dict:
        return json.loads((self.data / "demo-credentials.json").read_text())


def make_run_command(variables: dict[str, str]) -> list[str]:
    """The command `make run VAR=value ...` runs (from `make -n`), with this interpreter."""
    dry = subprocess.run(["make", "-n", "--no-print-directory", "run",
                          *(f"{k}={v}" for k, v in variables.items())],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    text = dry.stdout.replace("\\\n", " ")
    line = next(x for x in text.splitlines() if "scripts/run_local.py" in x)
    argv = shlex.split(line)
    assert argv[0].endswith("python"), argv
    return [sys.executable, *argv[1:]]


def test_make_run_takes_its_addresses_and_data_directory():
    variables = {"LISTEN": "127.0.0.1:51151", "WORKER_LISTEN": "127.0.0.1:51152",
                 "METRICS_LISTEN": "127.0.0.1:51153", "WORKER_METRICS_LISTEN": "127.0.0.1:51154",
                 "CONSOLE": "127.0.0.1:51155", "DATA": "/tmp/a data dir"}
    argv = make_run_command(variables)
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags == {"--data-dir": "/tmp/a data dir", "--listen": "127.0.0.1:51151",
                     "--worker-listen": "127.0.0.1:51152",
                     "--metrics-listen": "127.0.0.1:51153",
                     "--worker-metrics-listen": "127.0.0.1:51154",
                     "--console-listen": "127.0.0.1:51155"}


@contextlib.contextmanager
def make_run(directory: Path):
    """`make run` (its command, as make would run it) on free ports and a data directory
    with a space in its name; stops it with SIGTERM as Ctrl-C would."""
    variables = {"LISTEN": f"127.0.0.1:{free_port()}",
                 "WORKER_LISTEN": f"127.0.0.1:{free_port()}",
                 "METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                 "WORKER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                 "CONSOLE": f"127.0.0.1:{free_port()}",
                 "DATA": str(directory / "data dir")}
    log = directory / "make-run.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BROKER_", "WORKER_"))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(make_run_command(variables), cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**env, "PYTHONUNBUFFERED": "1"})
    # COLUMNS: the width of the terminal `broker status` fits its tables to.
    stack = LocalStack(proc, {**env, **variables, "COLUMNS": "120"}, log)
    try:
        _wait_until_offered(stack)
        yield stack
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def _wait_until_offered(stack: LocalStack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    credentials = stack.data / "demo-credentials.json"
    while time.monotonic() < deadline:
        assert stack.proc.poll() is None, stack.log.read_text()
        if credentials.exists():
            try:
                with BrokerClient(stack.env["LISTEN"], stack.credentials["agent_api_key"],
                                  retries=0, timeout=2) as agent:
                    if [o.endpoint for o in agent.list_offers(model="tiny-lm")] == \
                            [stack.env["WORKER_LISTEN"]]:
                        return
            except BrokerClientError:
                pass
        time.sleep(0.3)
    raise TimeoutError(stack.log.read_text())


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout


def readme_steps() -> list[doc_blocks.Step]:
    return doc_blocks.shell_steps(README, {0: "make run", 4: "installs", 6: "approval"})


def test_the_blocks_read_addresses_and_data_directory_from_variables():
    steps = readme_steps()
    variables = [s for s in steps if s.block == 1]
    assert [s.command.split("=")[0] for s in variables] == \
        ["export LISTEN", "export WORKER_LISTEN", "export DATA", "export BROKER_DATA_DIR"]
    for step in steps:
        if step.block == 1:
            continue
        for default in DEFAULTS:
            assert default not in step.command, step.command
        assert not re.search(r"(^|[\s'\"=])\.?/?var/", step.command), step.command


def test_the_readme_says_what_tiny_lm_is_and_what_a_request_id_may_be():
    text = " ".join(README.read_text().split())
    assert "random weights from a fixed seed" in text and "`[checkpoints]` table" in text
    assert f"at most {MAX_REQUEST_ID} printable ASCII characters" in text
    assert "It is optional" in text


def test_every_readme_block_runs_as_written(tmp_path):
    steps = readme_steps()
    python_blocks = [b for b in doc_blocks.blocks(README) if b.lang == "python"]
    assert len(python_blocks) == 1
    # Run from the repository root, as the README says; with another interpreter than
    # the repository's .venv, its bin directory stands in for .venv/bin.
    substitutions = {} if VENV_BIN == ROOT / ".venv" / "bin" else {".venv/bin/": f"{VENV_BIN}/"}
    before = git_status()
    with make_run(tmp_path) as stack:
        doc_blocks.run(steps, cwd=ROOT, env=stack.env, substitutions=substitutions)
        agent_py = subprocess.run([sys.executable, "-c", python_blocks[0].text], cwd=ROOT,
                                  env=stack.env, capture_output=True, text=True, timeout=120)
        with grpc.insecure_channel(stack.env["LISTEN"]) as channel:
            admin = Client(channel, stack.credentials["admin_api_key"])
            violations = list(admin.summary().violations)
            metrics = [urllib.request.urlopen(f"http://{stack.env[name]}/metrics",
                                              timeout=5).status
                       for name in ("METRICS_LISTEN", "WORKER_METRICS_LISTEN")]
        credentials = stack.credentials
        wallet_id = credentials["wallet_id"]
    assert git_status() == before  # nothing written into the repository
    assert violations == []
    assert metrics == [200, 200]

    def only(needle: str) -> doc_blocks.Step:
        return doc_blocks.only(steps, needle)

    refused = only('{"amount": "50000000"}')
    assert [s for s in steps if s.rc] == [refused], doc_blocks.failures(steps)

    # list, describe, health
    listed = set(only(" list").output.split())
    assert listed >= SERVICES | {"grpc.health.v1.Health"}
    assert "rpc Authorize ( .broker.v1.AuthorizeRequest )" in \
        only("describe broker.v1.AuthorizationService").output
    assert "int64 amount = 2;" in only("describe broker.v1.AuthorizeRequest").output
    assert only("Health/Check").json() == [{"status": "SERVING"}]

    # offers, authorize (and its retry), balances
    offers = only("ListOffers").json()[0]["offers"]
    assert [o["endpoint"] for o in offers] == [stack.env["WORKER_LISTEN"]]
    authorization = only('echo "$AUTH"').json()[0]["authorization"]
    assert authorization["amount"] == "200000"
    assert authorization["state"] == "AUTHORIZATION_STATE_HELD"
    assert authorization["voucher"].startswith("v1.")
    retry = only("<<JSON | field authorization.authorization_id")
    assert retry.output.strip() == authorization["authorization_id"]
    wallet = [s.json()[0] for s in steps if s.command.startswith(
        '.venv/bin/grpcurl -plaintext -H "$AGENT" "$LISTEN" broker.v1.WalletService/GetBalance')]
    assert [b["account_id"] for b in wallet] == [wallet_id] * 3
    assert [b["balance"] for b in wallet] == [
        {"posted": "5000000", "available": "5000000"},  # JSON leaves out zero (pending)
        {"posted": "5000000", "pending": "200000", "available": "4800000"},  # one hold only
        {"posted": "5000000", "available": "5000000"},  # settled, refilled to the target
    ]

    # execute: accepted, 64 outputs, at least one acknowledged usage report, the result
    events = only('{"voucher": "$VOUCHER"').json()
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "result", kinds
    assert kinds.count("output") == 64
    assert kinds.count("usage") >= 1
    assert set(kinds) == {"accepted", "output", "usage", "result"}
    result = events[-1]["result"]
    assert result["status"] == "JOB_STATUS_COMPLETED"

    # the receipt, as the worker and the broker give it
    receipt = only("AuthorizationService/GetReceipt <<JSON\n{\"authorization_id\": "
                   "\"$AUTHORIZATION_ID\"}").json()[0]["receipt"]
    # (the broker's copy also names the authorization and the wallet, never the worker's)
    assert receipt == {**result["receipt"], "wallet_id": wallet_id,
                       "authorization_id": authorization["authorization_id"]}
    charged = int(receipt["charged"])
    assert charged > 0 and int(receipt["released"]) == 200_000 - charged
    assert receipt["usage"]["output_tokens"] == "64"

    # what was spent shows in the treasury and the spend counters, and `broker status`
    treasury = [s.json()[0]["balance"]["posted"] for s in steps if s.command.startswith(
        '.venv/bin/grpcurl -plaintext -H "$OWNER" "$LISTEN" broker.v1.WalletService/GetBalance')]
    assert [int(t) for t in treasury] == [95_000_000, 95_000_000 - charged]
    spend = only("GetSpendStatus").json()[0]["status"]
    assert (spend["wallet_id"], int(spend["spent_today"])) == (wallet_id, charged)
    status = only("broker status --broker").output
    assert "Treasury: 94." in status and "demo agent wallet" in status
    assert f"0.{charged:06d}" in status and receipt["receipt_id"] in status
    assert max(map(len, status.splitlines())) <= 120

    voucher_keys = only("ListVoucherKeys").json()[0]["keys"]
    assert authorization["voucher"].split(".")[1] in [k["key_id"] for k in voucher_keys]
    keys = only("ListReceiptSigningKeys").json()[0]["keys"]
    assert receipt["key_id"] in [k["key_id"] for k in keys]

    status = refused.json()[0]
    assert status["code"] == 9  # FAILED_PRECONDITION
    details = {d["@type"].rsplit(".", 1)[1]: d for d in status["details"]}
    assert (details["ErrorInfo"]["reason"], details["ErrorInfo"]["domain"]) == \
        ("INSUFFICIENT_FUNDS", "broker.v1")
    assert "QuotaFailure" in details

    # the Node.js agent
    node = only("make demo-node").output
    assert re.search(r"^receipt signature verified", node, re.M), node

    # quotes: a real quote id, bound at once, then released
    quote = only('echo "$QUOTE"').json()[0]["quote"]
    best = only('echo "$BEST"').json()[0]["authorization"]
    assert best["quote_id"] == quote["quote_id"] and quote["quote_id"].startswith("quo_")
    assert [o["endpoint"] for o in best["offers"]] == [stack.env["WORKER_LISTEN"]]
    cancelled = only("CancelAuthorization").json()[0]["authorization"]
    assert (cancelled["authorization_id"], cancelled["state"]) == \
        (best["authorization_id"], "AUTHORIZATION_STATE_CANCELLED")

    # privacy: the key registered, a labelled job's receipt opened by the owner only
    assert (tmp_path / "data dir" / "owner-receipt.key").stat().st_mode & 0o777 == 0o600
    assert only("RegisterReceiptKey").json()[0]["receipt_key"]["key_id"].startswith("rk_")
    labelled = only('{"voucher": "$(echo "$LABELLED"').json()[-1]["result"]
    assert labelled["status"] == "JOB_STATUS_COMPLETED"
    assert "labels" not in labelled["receipt"] and "nightly-eval" not in str(labelled)
    opened = only("broker receipts open").json()[0]
    assert opened["labels"] == {"job": "nightly-eval"}
    assert opened["usage"]["output_tokens"] == 16
    statement = only("GetStatement").json()[0]["statement"]
    assert {w["wallet_id"] for w in statement["wallets"]} == {wallet_id}
    assert int(statement["wallets"][0]["charged"]) > charged
    payouts = only("GetPayoutStatement").json()[0]["statement"]
    assert sum(int(p["payout"]) for p in payouts["periods"]) > 0
    assert re.match(r"voucher key \S+ is active", only("keys rotate voucher").output)

    # delegation: an agent key, a sub-budget, a narrowed voucher's job, the mandate named
    assert (tmp_path / "data dir" / "owner-mandate.key").stat().st_mode & 0o777 == 0o600
    assert only("RegisterMandateKey").json()[0]["key"]["key_id"].startswith("mk_")
    assert only("SetSpendPolicy").json()[0]["policy"]["require_mandate"] is True
    sub_budget = only('echo "$SUB" | field sub_budget').json()[0]
    assert (sub_budget["depth"], sub_budget["cap"]) == (1, "400000")
    summarised = only("-H \"$SUMMARISER\"").json()[0]["authorization"]
    assert summarised["wallet_id"] == sub_budget["wallet_id"]
    narrowed_job = only('{"voucher": "$NARROWED"').json()[-1]["result"]
    assert narrowed_job["status"] == "JOB_STATUS_COMPLETED"
    assert "mandate_hash" not in narrowed_job["receipt"]  # the worker's copy
    planner_receipt = only('echo "$RECEIPTS"').json()[0]["receipts"][0]
    assert planner_receipt["receipt_id"] == narrowed_job["receipt"]["receipt_id"]
    assert planner_receipt["held"] == "100000"
    mandate = only("GetMandate").json()[0]["mandate"]
    payload = base64.urlsafe_b64decode(mandate["token"].split(".")[2] + "==")
    assert planner_receipt["mandate_hash"] == summarised["mandate_hash"] == \
        mandate["mandate_hash"] == hashlib.sha256(payload).hexdigest()
    # held under it now: the summariser's 50,000 and the planner's 300,000, less what the
    # narrowed job did not use
    assert int(mandate["used"]) == 350_000 - int(planner_receipt["released"])

    # the Python agent
    assert agent_py.returncode == 0, agent_py.stdout + agent_py.stderr
    held, charged_py, released = map(int, re.search(
        r"^held (\d+), charged (\d+), released (\d+)$", agent_py.stdout, re.M).groups())
    assert held == 250_000 and charged_py > 0 and charged_py + released == held
