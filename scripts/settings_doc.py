"""Rewrite the settings tables in docs/operations.md from the schemas in
broker/settings.py, worker/config.py and broker/console/settings.py
(tests/test_settings.py checks they match).

    .venv/bin/python scripts/settings_doc.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.console.settings import SCHEMA as CONSOLE_SCHEMA  # noqa: E402
from broker.settings import SCHEMA  # noqa: E402
from worker.config import SCHEMA as WORKER_SCHEMA  # noqa: E402

DOC = ROOT / "docs" / "operations.md"


def main() -> int:
    text = DOC.read_text()
    for name, schema in (("broker", SCHEMA), ("worker", WORKER_SCHEMA),
                         ("console", CONSOLE_SCHEMA)):
        begin, end = f"<!-- settings:{name} -->\n", f"<!-- /settings:{name} -->"
        head, found, rest = text.partition(begin)
        if not found or end not in rest:
            sys.exit(f"{DOC}: markers {begin.strip()} ... {end} not found")
        text = head + begin + schema.markdown() + end + rest.split(end, 1)[1]
    DOC.write_text(text)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
