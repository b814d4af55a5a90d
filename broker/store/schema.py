"""The schema version of a data directory, and the migrations between versions.

`meta/schema_version` holds {"version": n}. A data directory written before versions
were stored has none: version 0. `broker serve` serves only the current version
(`require_current`); `broker migrate` brings an older directory up to date in one
atomic operation (`migrate`), or refuses, changing nothing, when the directory is
damaged or from a newer release.

Version 0 -> 1 (typed records, no shared hot keys): every record is checked against
its table's declared type (records.py), the obsolete `meta/*_seq` counters are dropped
(ids are time-ordered now), and the version is stored. Nothing else changes shape:
platform-account rows stay valid (new changes arrive as entries beside them), and
journal entries sealed by the old rule keep verifying by that rule.

Version 1 -> 2 (refunds on statements): every refund made before gets its rows in the
owner_refunds and provider_refunds indexes that statements read, as a refund now writes
them (broker/core/refunds.py `index_for_statements`), under the period it was made in.
The broker's receipt_period_ms is not known here: the period is that of the refunded
receipt (an hour or a day, the setting in force when it settled). Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.store.base import TABLES, Tx
from broker.store.records import SCHEMA_VERSION, RecordTypeError, check

KEY = "schema_version"
HOUR_MS, DAY_MS = 3_600_000, 86_400_000  # the periods receipts may record


class SchemaError(RuntimeError):
    """The data directory's schema cannot be served or migrated (one line, for people)."""


def stored_version(tx: Tx) -> int:
    try:
        record = tx.get("meta", KEY)
    except ValueError:
        record = {}
    if record is None:
        return 0
    version = record.get("version")
    if type(version) is not int or version < 1:
        raise SchemaError(f"meta/{KEY} is damaged ({record!r:.80}): not a schema version "
                          "this release knows; nothing was changed")
    return version


def stamp(tx: Tx) -> None:
    """Mark a new, empty data directory as the current version (`broker init`)."""
    tx.put("meta", KEY, {"version": SCHEMA_VERSION})


def require_current(tx: Tx, data_dir: str) -> None:
    """SchemaError unless the data directory is at the current version."""
    version = stored_version(tx)
    if version < SCHEMA_VERSION:
        raise SchemaError(f"data directory {data_dir} has schema version {version}, this "
                          f"release needs {SCHEMA_VERSION}: stop the broker and run "
                          f"`broker migrate --data-dir {data_dir}` first")
    if version > SCHEMA_VERSION:
        raise SchemaError(_newer(data_dir, version))


def _newer(data_dir: str, version: int) -> str:
    return (f"data directory {data_dir} has schema version {version}, written by a newer "
            f"release (this one knows up to {SCHEMA_VERSION}); use that release")


def _check_every_record(tx: Tx) -> int:
    """Each stored record decodes and is of its table's type; how many there are."""
    count = 0
    for table in TABLES:
        last = ""  # a record that does not decode fails the scan after the last good one
        try:
            for key, value in tx.scan(table):
                last = key
                check(table, value)
                count += 1
        except RecordTypeError as error:
            raise SchemaError(f"record {table}/{last} is damaged: {error}; nothing was "
                              "migrated") from None
        except ValueError as error:
            where = f"after {table}/{last}" if last else f"first of {table}"
            raise SchemaError(f"the record {where} is damaged: {error}; nothing was "
                              "migrated") from None
    return count


def _v0_to_v1(tx: Tx) -> None:
    for key, _ in list(tx.scan("meta")):
        if key.endswith("_seq"):
            tx.delete("meta", key)


def _v1_to_v2(tx: Tx) -> None:
    # The key layout and values of core/refunds.py index_for_statements, as of version 2
    # (a migration stays what its version meant, so it does not import the core).
    for refund_id, refund in list(tx.scan("refunds")):
        _checked("refunds", refund_id, refund)
        receipt = tx.get("receipts", refund["receipt_id"])
        if receipt is None:  # the audit reports it (INV-9); nothing to index it under
            continue
        _checked("receipts", refund["receipt_id"], receipt)
        period_ms = receipt["period_end_ms"] - receipt["period_start_ms"]
        if period_ms not in (HOUR_MS, DAY_MS):
            raise SchemaError(f"record receipts/{refund['receipt_id']} is damaged: its "
                              "period is not an hour or a day; nothing was migrated")
        start = refund["refund_ms"] - refund["refund_ms"] % period_ms
        tx.put("owner_refunds", f"{receipt['owner_id']}/{start:016d}/{refund_id}", {
            "wallet_id": receipt["wallet_id"], "payment_model": receipt["payment_model"],
            "amount": refund["amount"]})
        tx.put("provider_refunds", f"{receipt['provider_id']}/{start:016d}/{refund_id}", {
            "amount": refund["amount"], "payout": refund["provider_refund"],
            "fee": refund["fee_refund"]})


def _checked(table: str, key: str, value: dict) -> None:
    """A record a migration reads must be of its type (else SchemaError, nothing changed)."""
    try:
        check(table, value)
    except RecordTypeError as error:
        raise SchemaError(f"record {table}/{key} is damaged: {error}; nothing was "
                          "migrated") from None


MIGRATIONS: dict[int, Callable[[Tx], None]] = {0: _v0_to_v1, 1: _v1_to_v2}


def migrate(tx: Tx, data_dir: str) -> tuple[int, int]:
    """Bring the data directory to the current version (an op: atomic). Returns (from,
    to). Raises SchemaError, having changed nothing, for a damaged directory or one
    from a newer release."""
    found = stored_version(tx)
    if found > SCHEMA_VERSION:
        raise SchemaError(_newer(data_dir, found))
    for version in range(found, SCHEMA_VERSION):
        MIGRATIONS[version](tx)
    if found != SCHEMA_VERSION:
        _check_every_record(tx)
        stamp(tx)
    return found, SCHEMA_VERSION
