"""The shape every stored record has: a JSON-able dict (the broker's store keeps these)."""

from typing import Any

Record = dict[str, Any]
