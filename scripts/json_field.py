"""Print one field of the JSON document on stdin: `json_field.py authorization.voucher`
(a number picks from a list: `receipts.0.receipt_id`).

The guides' shell blocks use it (as `field`, like `jq -r .authorization.voucher`) to
carry ids from one answer to the next call. When the previous call failed and left
nothing, or the field is missing, it says so and exits 1 instead of passing on an
empty value."""

from __future__ import annotations

import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit("usage: json_field.py DOTTED.PATH < answer.json")
    path = sys.argv[1]
    text = sys.stdin.read()
    if not text.strip():
        sys.exit(f"field {path}: no answer to read (did the call before it fail?)")
    try:
        value = json.loads(text)
    except ValueError as error:
        sys.exit(f"field {path}: the answer is not JSON ({error})")
    for key in path.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]  # receipts.0.receipt_id: the first of a list
            continue
        if not isinstance(value, dict) or key not in value:
            sys.exit(f"field {path}: not in the answer (no {key!r})")
        value = value[key]
    print(value if isinstance(value, str) else json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main())
