"""Small input checks shared by the core operations."""

from __future__ import annotations

from common.errors import invalid

MAX_NAME = 100
MAX_ID = 64


def name(value: str, field_path: str, *, required: bool = False) -> str:
    if required and not value:
        raise invalid(field_path, "is required")
    if len(value) > MAX_NAME or not value.isprintable():
        raise invalid(field_path, f"must be at most {MAX_NAME} printable characters")
    return value


def ident(value: str, field_path: str, *, required: bool = True) -> str:
    if required and not value:
        raise invalid(field_path, "is required")
    if len(value) > MAX_ID or not value.isascii() or not value.isprintable():
        raise invalid(field_path, f"must be at most {MAX_ID} printable ASCII characters")
    return value


def page_size(value: int, field_path: str = "page_size") -> int:
    if value < 0 or value > 1000:
        raise invalid(field_path, "must be between 0 and 1000")
    return value or 100
