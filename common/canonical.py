"""Canonical JSON: the exact bytes that are signed, hashed or compared (docs/wire.md).

Keys sorted, no whitespace, non-ASCII escaped as \\uXXXX, integers as decimal digits.
"""

from __future__ import annotations

import json
from typing import Any


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
