"""A short run of the crash harness (`make crash-test` runs the long one): a broker under
load from several client processes is SIGKILLed and restarted; every acknowledged
operation must survive and every ledger invariant must hold. The same on PostgreSQL,
where the kills take brokers and the database."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3


def run(tmp_path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "crash_test.py"), *args, "--clients", "2",
         "--work-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_short_crash_run_loses_nothing_acknowledged(tmp_path):
    result = run(tmp_path, "--kills", str(KILLS), "--seed", "20240611")
    output = result.stdout + result.stderr
    summary = re.search(r"^crash-test: kills=(\d+) operations=(\d+) acknowledged=(\d+) "
                        r"violations=(\d+)$", result.stdout, re.MULTILINE)
    assert summary, output
    kills, operations, acknowledged, violations = map(int, summary.groups())
    assert violations == 0, output
    assert kills == KILLS, output
    assert 0 < acknowledged <= operations, output
    assert result.returncode == 0, output


def test_short_crash_run_on_postgresql_kills_brokers_and_the_database(tmp_path):
    # Six kills: four of one broker or another, the third of the database, the sixth
    # of the database and a broker together.
    result = run(tmp_path, "--store", "postgresql", "--kills", "6", "--seed", "11",
                 timeout=300)
    output = result.stdout + result.stderr
    cluster = re.search(r"^crash-test: store=postgresql brokers=3 broker_kills=(\d+) "
                        r"database_kills=(\d+)$", result.stdout, re.MULTILINE)
    summary = re.search(r"^crash-test: kills=(\d+) operations=(\d+) acknowledged=(\d+) "
                        r"violations=(\d+)$", result.stdout, re.MULTILINE)
    assert cluster and summary, output
    broker_kills, database_kills = map(int, cluster.groups())
    kills, operations, acknowledged, violations = map(int, summary.groups())
    assert violations == 0, output
    assert (kills, broker_kills, database_kills) == (6, 5, 2), output
    assert 0 < acknowledged <= operations, output
    assert result.returncode == 0, output
