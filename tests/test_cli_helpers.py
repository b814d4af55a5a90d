"""The CLI helpers the guides use fail loudly: a non-zero exit and one clear line on
stderr (which file, which directory, where that came from), never a traceback; and
`broker status` tables fit the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker import status

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, stdin: str = "", cwd: Path = ROOT):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def assert_loud(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode != 0 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr


def test_credentials_name_the_directory_they_looked_in_and_where_it_came_from(tmp_path):
    empty = tmp_path / "not make run's"
    assert_loud(cli("credentials", "--data-dir", str(empty), "agent"),
                f"no demo credentials in {empty}", "from flag --data-dir", "BROKER_DATA_DIR")
    assert_loud(cli("credentials", "agent", env={"BROKER_DATA_DIR": str(empty)}),
                f"no demo credentials in {empty}", "from env BROKER_DATA_DIR")


def test_keys_rotate_without_its_admin_key_file_or_broker(tmp_path):
    missing = tmp_path / "admin.key"
    assert_loud(cli("keys", "rotate", "voucher", "--admin-key-file", str(missing)),
                f"cannot read the admin key file {missing}: No such file or directory")
    missing.write_text("\n")
    assert_loud(cli("keys", "rotate", "voucher", "--admin-key-file", str(missing)),
                f"the admin key file {missing} is empty")
    missing.write_text("not-a-key\n")
    unreachable = cli("keys", "rotate", "voucher", "--admin-key-file", str(missing),
                      "--broker", "127.0.0.1:1")
    assert_loud(unreachable, "broker keys rotate: UNAVAILABLE")
    usage = cli("keys", "rotate", "--help").stdout
    assert "--broker HOST:PORT  the running broker's address (default 127.0.0.1:50051)" in \
        " ".join(usage.split()).replace(" the running", "  the running")


def test_status_without_a_key(tmp_path):
    assert_loud(cli("status", "--data-dir", str(tmp_path)),
                f"no demo credentials in {tmp_path}", "--api-key-file")
    assert_loud(cli("status", "--api-key-file", str(tmp_path / "owner.key")),
                "cannot read the owner key file")


def test_receipts_open_says_what_is_wrong_with_its_input(tmp_path):
    key = tmp_path / "owner-receipt.key"
    assert cli("receipts", "keygen", "--out", str(key)).returncode == 0
    public = cli("receipts", "public-key", "--key", str(key))
    assert public.returncode == 0 and len(public.stdout.strip()) == 44  # 32 bytes, base64
    assert_loud(cli("receipts", "open", "--key", str(key)), "the input is empty")
    assert_loud(cli("receipts", "open", "--key", str(key),
                    stdin='{"receipt": {"sealedItemised": 5}}'), "not a receipt or statement")
    assert_loud(cli("receipts", "public-key", "--key", str(tmp_path / "nope")),
                "No such file")


def test_json_field_fails_loudly_on_a_missing_answer():
    def field(path: str, stdin: str):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "json_field.py"), path],
                              input=stdin, capture_output=True, text=True, timeout=30)

    assert field("a.b", '{"a": {"b": "x"}}').stdout == "x\n"
    assert field("a", '{"a": {"b": 1}}').stdout == '{"b": 1}\n'
    for stdin, phrase in (("", "no answer to read"), ("oops", "not JSON"),
                          ('{"a": {}}', "not in the answer (no 'b')")):
        done = field("a.b", stdin)
        assert done.returncode == 1 and done.stdout == "" and phrase in done.stderr
        assert "Traceback" not in done.stderr


def test_status_tables_fit_the_terminal():
    report = status.Status(
        treasury_posted=95_000_000, treasury_available=94_500_000,
        wallets=[status.WalletLine("wal_1", "a wallet with a very long name indeed", 5_000_000,
                                   500_000, 1_234_567, 12_345_678_901, frozen=True),
                 status.WalletLine("wal_2", "", 0, 0, 0, 0, frozen=False)],
        receipts=[status.ReceiptLine("rcp_0123456789abcdef", "wal_1",
                                     "2026-12-02 08:00", 200_000, 1_234)])
    wide = status.render(report, 200)
    assert "Treasury: 95.000000 credits posted, 94.500000 available" in wide
    assert "a wallet with a very long name indeed (frozen)" in wide and "wal_2" in wide
    assert "12,345.678901" in wide and "0.001234" in wide and "rcp_0123456789abcdef" in wide
    narrow = status.render(report, 64)
    assert max(map(len, narrow.splitlines())) <= 64, narrow
    assert "a wallet with" in narrow and "…" in narrow
    assert status.credits(-1) == "-0.000001"
