"""One source of error reasons: the enum broker.v1.ErrorReason. The code raises no reason
outside it (statically, and BrokerError refuses one at run time), every value is raised
somewhere, and docs/errors.md, generated from the enum and the code, is up to date."""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from broker.v1 import error_reason_pb2
from common.errors import REASONS, BrokerError, Code, invalid, not_found

ROOT = Path(__file__).resolve().parents[1]
REASON = re.compile(r"^[A-Z][A-Z_]+[A-Z]$")
_spec = importlib.util.spec_from_file_location("gen_error_docs",
                                               ROOT / "scripts/gen_error_docs.py")
gen = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def raised_reasons() -> set[str]:
    """Every upper-case string given to a BrokerError-making call in the code."""
    reasons = set()
    for path in [*(ROOT / "broker").rglob("*.py"), *(ROOT / "common").rglob("*.py"),
                 *(ROOT / "worker").rglob("*.py")]:
        if "/v1/" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            args = [a.value for a in node.args if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)]
            if name == "not_found" and args:
                reasons.add(f"{args[0].upper()}_NOT_FOUND")
            elif name in ("BrokerError", "precondition", "invalid", "denied"):
                reasons |= {a for a in args if REASON.match(a) and a not in Code.__members__}
                if name == "invalid" and len(node.args) < 3:
                    reasons.add("INVALID_ARGUMENT")  # its default reason
    return reasons


def test_every_raised_reason_is_in_the_enum():
    reasons = raised_reasons()
    assert len(reasons) > 30  # the scan itself works
    assert reasons - set(REASONS) == set()


def test_every_enum_value_is_raised_somewhere():
    assert set(REASONS) - raised_reasons() == set()


def test_the_wire_strings_are_the_value_names_without_the_prefix():
    values = error_reason_pb2.ErrorReason.DESCRIPTOR.values
    assert values[0].name == "ERROR_REASON_UNSPECIFIED" and values[0].number == 0
    assert [v.name for v in values[1:]] == [f"ERROR_REASON_{r}" for r in REASONS]
    assert "WALLET_NOT_FOUND" in REASONS and "ERROR_REASON_WALLET_NOT_FOUND" not in REASONS
    for reason, info in REASONS.items():
        assert info.codes and set(info.codes) <= set(Code.__members__), reason


def test_an_error_outside_the_enum_cannot_be_made():
    with pytest.raises(ValueError, match="NOT_A_REASON"):
        BrokerError(Code.INVALID_ARGUMENT, "NOT_A_REASON", "x")
    with pytest.raises(ValueError, match="WALLET_NOT_FOUND"):  # a reason with a wrong code
        BrokerError(Code.INVALID_ARGUMENT, "WALLET_NOT_FOUND", "x")
    with pytest.raises(ValueError, match="GADGET_NOT_FOUND"):
        not_found("gadget", "g1")
    assert not_found("wallet", "w1").reason == "WALLET_NOT_FOUND"
    assert invalid("x", "bad").reason == "INVALID_ARGUMENT"


def test_errors_md_is_up_to_date():
    assert (ROOT / "docs/errors.md").read_text() == gen.render(), \
        "docs/errors.md is stale: run make api-docs"


def test_every_rpc_has_its_reasons_in_the_order_the_code_checks_them():
    table = {rpc.name: rpc for rpc in gen.rpcs()}
    names = {f"{f.package}.{s.name}.{m.name}" for f in gen.api_docs.load().file
             if f.package in ("broker.v1", "worker.v1") for s in f.service for m in s.method}
    assert set(table) == names
    # A request that does not decode, then authentication, validation, the state it needs.
    fund = table["broker.v1.WalletService.FundWallet"].reasons
    assert fund[:7] == ["INVALID_ARGUMENT", "API_KEY_MISSING", "API_KEY_INVALID", "API_KEY_REVOKED",
                        "ROLE_NOT_ALLOWED", "AUTH_THROTTLED", "RATE_LIMITED"]
    assert fund.index("INVALID_AMOUNT") < fund.index("WALLET_NOT_FOUND") \
        < fund.index("INSUFFICIENT_FUNDS")
    assert table["broker.v1.WalletService.FundWallet"].replayed
    assert not table["broker.v1.WalletService.GetBalance"].replayed
    # A function handed to a helper, and a function the daemon injects, are followed.
    assert "APPROVAL_NOT_PENDING" in table["broker.v1.PolicyService.ApproveAuthorization"].reasons
    execute = table["worker.v1.WorkerService.Execute"].reasons
    assert execute.index("WORKER_BUSY") < execute.index("VOUCHER_MALFORMED") \
        < execute.index("BROKER_UNAVAILABLE")
    # Every reason is one some RPC can return.
    assert set(REASONS) == {r for rpc in table.values() for r in rpc.reasons}
