"""store.url: which store, checked at load, and shown with its password masked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.store import dsn

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://broker:s3cret@db.internal:5432/ledger",
     "postgresql://broker:***@db.internal:5432/ledger"),
    ("postgresql://broker@/ledger?host=/run/pg&password=s3cret",
     "postgresql://broker@/ledger?host=/run/pg&password=***"),
    ("postgresql://broker@db/ledger", "postgresql://broker@db/ledger"),
    ("postgres://u:p%40ss@h/d", "postgres://u:***@h/d"),
])
def test_masked_hides_the_password_only(url: str, shown: str) -> None:
    assert dsn.masked(url) == shown


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql://h/d", "postgresql:// URL"),
    ("postgresql://h:notaport/d", "not a valid URL"),
    ("postgresql://h", "names no database"),
])
def test_check_says_what_is_wrong(url: str, problem: str) -> None:
    assert problem in (dsn.check(url) or "")
    assert dsn.check("") is None and dsn.check("postgresql://u@h/db") is None


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_config_show_and_errors_never_print_the_password() -> None:
    shown = cli("config", "show", env={"BROKER_STORE_URL": "postgresql://u:s3cret@h/db"})
    assert shown.returncode == 0
    assert 'url = "postgresql://u:***@h/db"  # env BROKER_STORE_URL' in shown.stdout
    assert "s3cret" not in shown.stdout
    bad = cli("serve", "--store", "postgresql://u:s3cret@h")
    assert bad.returncode == 2
    assert "names no database" in bad.stderr and "s3cret" not in bad.stderr
