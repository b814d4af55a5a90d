"""What the console's pages show, gathered from the broker with the signed-in key.

Every amount leaves here as a decimal string of micro-credits (as protobuf's JSON
writes int64), so the browser never turns money into floating point."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from ..client import BrokerClientError
from ..v1 import statement_service_pb2 as statement_pb
from .broker_calls import ConsoleClient

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
GRANULARITIES = {"hour": (HOUR_MS, statement_pb.STATEMENT_GRANULARITY_HOUR),
                 "day": (DAY_MS, statement_pb.STATEMENT_GRANULARITY_DAY)}
CHART_BUCKETS = {"hour": 24, "day": 30}
MAX_STATEMENT_BUCKETS = 400  # one GetStatement per row period
# A wallet row's place in its delegation tree and its subtree's totals (docs/delegation.md);
# empty on the other rows.
ROLL_UP_COLUMNS = ["parent_wallet_id", "depth", "rollup_charged", "rollup_released",
                   "rollup_job_count", "rollup_refunded"]
NO_ROLL_UP = [""] * len(ROLL_UP_COLUMNS)


def as_json(message) -> dict:
    """A proto message as JSON: every field present, int64 as strings, enums by name."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


@dataclass(frozen=True)
class Identity:
    """Who signed in, as far as the broker's answers tell."""

    role: str  # "owner" or "auditor"
    owner_id: str


def identify(client: ConsoleClient, now_ms: int) -> Identity:
    """The key's role and owner, from what the broker lets it do. Raises
    BrokerClientError: a bad or revoked key, UNAUTHENTICATED; an agent or worker key,
    PERMISSION_DENIED from ListWallets, which only owners, auditors and admins may call;
    an admin or a global auditor key, INVALID_ARGUMENT from it (they read every tenant
    and must name one: the console is for one tenant's keys)."""
    client.list_wallets()
    try:
        client.balance()  # the treasury: only an owner's key names no wallet here
        role = "owner"
    except BrokerClientError as error:
        if error.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        role = "auditor"
    start = now_ms - now_ms % DAY_MS
    owner_id = client.get_statement(start, start + DAY_MS).owner_id
    return Identity(role, owner_id)


def overview(client: ConsoleClient, identity: Identity) -> dict:
    """The treasury (owners only: auditors cannot read it) and every wallet with its
    balance, today's and this month's spend, and its policy's limits."""
    wallets = []
    for wallet in client.list_wallets():
        status = client.spend_status(wallet.wallet_id)
        policy = client.spend_policy(wallet.wallet_id)
        limits = policy.policy.limits
        wallets.append({
            **as_json(wallet),
            "spend": as_json(status),
            "limits": as_json(limits),
            "approval_threshold": str(policy.policy.approvals.threshold),
        })
    treasury = as_json(client.balance()) if identity.role == "owner" else None
    return {"role": identity.role, "owner_id": identity.owner_id, "treasury": treasury,
            "wallets": wallets}


def approvals(client: ConsoleClient) -> list[dict]:
    """Pending approvals, oldest first, each with the agent's labels."""
    out = []
    for approval in client.list_approvals():
        labels = dict(client.get_authorization(approval.authorization_id).labels)
        out.append({**as_json(approval), "labels": labels})
    return out


def receipts(client: ConsoleClient) -> list[dict]:
    """Every wallet's receipts, newest first, with the wallet's name."""
    names = {w.wallet_id: w.display_name for w in client.list_wallets()}
    found = {}
    for wallet_id in names:
        # A sub-budget's receipts are listed under every wallet above it too: each
        # once, under the wallet it was spent from.
        for receipt in client.list_receipts(wallet_id):
            found[receipt.receipt_id] = receipt
    out = [{**as_json(r), "wallet_id": r.wallet_id,
            "wallet_name": names.get(r.wallet_id, "")} for r in found.values()]
    out.sort(key=lambda r: (r["period_start"], r["receipt_id"]), reverse=True)
    return out


def spend_series(client: ConsoleClient, granularity: str, now_ms: int) -> dict:
    """Charged per wallet and per payment model in each of the last hours (24) or days
    (30), one statement per period."""
    step, _ = GRANULARITIES[granularity]
    end = now_ms - now_ms % step + step
    start = end - CHART_BUCKETS[granularity] * step
    names = {w.wallet_id: w.display_name for w in client.list_wallets()}
    return {"granularity": granularity, "wallet_names": names,
            "periods": [_period(s) for s in _statements(client, start, end, granularity)]}


def statement_rows(client: ConsoleClient, start_ms: int, end_ms: int,
                   granularity: str) -> list[list[str]]:
    """A statement as CSV rows: per period, one row per wallet and per payment model
    and the period's total; then the whole range's totals (one signed statement).
    `refunded` is what was refunded in the period (of charges of any period)."""
    names = {w.wallet_id: w.display_name for w in client.list_wallets()}
    rows = [["period_start", "period_end", "kind", "id", "name", "charged", "released",
             "job_count", "refunded", *ROLL_UP_COLUMNS]]
    for s in _statements(client, start_ms, end_ms, granularity):
        rows += _statement_rows(s, names)
    _, enum = GRANULARITIES[granularity]
    whole = client.get_statement(start_ms, end_ms, granularity=enum)
    rows.append([_time(whole.period_start), _time(whole.period_end), "range_total",
                 whole.key_id, "", str(whole.total_charged), str(whole.total_released),
                 str(whole.job_count), str(whole.total_refunded), *NO_ROLL_UP])
    return rows


def to_csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows([[_no_formula(cell) for cell in row] for row in rows])
    return out.getvalue()


class TooManyPeriods(ValueError):
    pass


def _statements(client: ConsoleClient, start_ms: int, end_ms: int, granularity: str):
    step, enum = GRANULARITIES[granularity]
    start = start_ms - start_ms % step
    if (end_ms - start) // step > MAX_STATEMENT_BUCKETS:
        raise TooManyPeriods(f"at most {MAX_STATEMENT_BUCKETS} {granularity}s at a time")
    for at in range(start, end_ms, step):
        statement = client.get_statement(at, at + step, granularity=enum)
        if statement.granularity != enum:
            # The broker records coarser periods than asked (receipt_period_ms): each
            # answer would cover the whole day again.
            raise TooManyPeriods("this broker records only whole days; choose days")
        yield statement


def _period(s: statement_pb.Statement) -> dict:
    return {"start": _time(s.period_start), "end": _time(s.period_end),
            "total_charged": str(s.total_charged), "job_count": str(s.job_count),
            "wallets": {w.wallet_id: str(w.charged) for w in s.wallets},
            "payment_models": {m.payment_model: str(m.charged) for m in s.payment_models}}


def _statement_rows(s: statement_pb.Statement, names: dict[str, str]) -> list[list[str]]:
    start, end = _time(s.period_start), _time(s.period_end)
    rows = [[start, end, "wallet", w.wallet_id, names.get(w.wallet_id, ""), str(w.charged),
             str(w.released), str(w.job_count), str(w.refunded), w.parent_wallet_id,
             str(w.depth), str(w.rollup_charged), str(w.rollup_released),
             str(w.rollup_job_count), str(w.rollup_refunded)]
            for w in s.wallets]
    rows += [[start, end, "payment_model", m.payment_model, "", str(m.charged), "",
              str(m.job_count), str(m.refunded), *NO_ROLL_UP] for m in s.payment_models]
    if s.job_count or s.total_refunded:
        rows.append([start, end, "period_total", "", "", str(s.total_charged),
                     str(s.total_released), str(s.job_count), str(s.total_refunded),
                     *NO_ROLL_UP])
    return rows


def _time(ts) -> str:
    return ts.ToJsonString()


def _no_formula(cell: str) -> str:
    """A spreadsheet must not run a name as a formula (CSV injection)."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell
