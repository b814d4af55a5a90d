"""Every ErrorInfo reason the code can raise is documented in docs/errors.md."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REASON = re.compile(r"^[A-Z][A-Z_]+[A-Z]$")
CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
         "UNAUTHENTICATED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE",
         "UNAVAILABLE"}


def raised_reasons() -> set[str]:
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
                reasons |= {a for a in args if REASON.match(a) and a not in CODES}
                if name == "invalid" and len(node.args) < 3:
                    reasons.add("INVALID_ARGUMENT")  # its default reason
    return reasons


def documented() -> set[str]:
    return set(re.findall(r"^\| `([A-Z_]+)` \|", (ROOT / "docs/errors.md").read_text(), re.M))


def test_every_raised_reason_is_documented():
    reasons = raised_reasons()
    assert len(reasons) > 30  # the scan itself works
    assert reasons - documented() == set()


def test_no_documented_reason_is_stale():
    assert documented() - raised_reasons() == set()
