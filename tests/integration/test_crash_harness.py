"""A short run of the crash harness (`make crash-test` runs the long one): a broker under
load from several client processes is SIGKILLed and restarted; every acknowledged
operation must survive and every ledger invariant must hold."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3


def test_short_crash_run_loses_nothing_acknowledged(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "crash_test.py"), "--kills", str(KILLS),
         "--clients", "2", "--seed", "20240611", "--work-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    summary = re.search(r"^crash-test: kills=(\d+) operations=(\d+) acknowledged=(\d+) "
                        r"violations=(\d+)$", result.stdout, re.MULTILINE)
    assert summary, output
    kills, operations, acknowledged, violations = map(int, summary.groups())
    assert violations == 0, output
    assert kills == KILLS, output
    assert 0 < acknowledged <= operations, output
    assert result.returncode == 0, output
