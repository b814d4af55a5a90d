"""The metering session as a pure state machine: usage in, decision out.

    open --usage--> open --usage (next interval would not fit)--> stopped
      \\______________ finish / hold timeout ______________/--> settled

Charges are computed from cumulative usage and capped at the budget (the hold),
so a charge never exceeds its hold. STOP is decided one reporting interval
ahead: when the charge rate seen so far, or one interval of GPU time at the
session's price, would use up what remains, or when the hold would expire
before the next report. The rate is measured on a monotonic clock where the stream
has one, so a wall-clock step does not turn into a made-up rate
(docs/reliability.md, "Clock steps").
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import BrokerError, Code, precondition
from common.money import USAGE_FIELDS, charge_for, check_usage

from ..store.base import Record

OPEN, SETTLED = "open", "settled"
BUDGET_EXHAUSTED, HOLD_EXPIRING = "budget_exhausted", "hold_expiring"


@dataclass(frozen=True)
class UsageDecision:
    session: Record  # the updated session record
    charged: int
    remaining: int
    stop_reason: str = ""  # "" = keep going


def new_session(session_id: str, authorization: Record, voucher_id: str, worker: Record,
                now: int, report_interval_ms: int) -> Record:
    return {"session_id": session_id, "authorization_id": authorization["authorization_id"],
            "voucher_id": voucher_id, "worker_id": worker["worker_id"],
            "provider_id": worker["provider_id"], "budget": authorization["amount"],
            "prices": dict(worker["prices"]), "usage": dict.fromkeys(USAGE_FIELDS, 0),
            "last_seq": 0, "charged": 0, "stop_reason": "", "state": OPEN,
            "open_ms": now, "last_report_ms": now, "expire_ms": authorization["expire_ms"],
            "report_interval_ms": report_interval_ms, "receipt_id": "",
            # The worker's usage key at redemption, and its last signed report.
            "usage_public_key": worker.get("usage_public_key", ""),
            "signed_usage": {"payload": "", "signature": ""},
            "epoch": 0}  # no stream attached yet (metering.attach)


def require_open(session: Record) -> None:
    if session["state"] != OPEN:
        raise precondition("SESSION_ALREADY_SETTLED", "the session is already settled",
                           session_id=session["session_id"], receipt_id=session["receipt_id"])


def _check_monotonic(previous: Record, usage: Record) -> None:
    for name in USAGE_FIELDS:
        if usage[name] < previous[name]:
            raise BrokerError(Code.INVALID_ARGUMENT, "USAGE_NOT_MONOTONIC",
                              f"usage.{name} went backwards ({usage[name]} < {previous[name]}); "
                              "reports are cumulative",
                              {"field": f"usage.{name}"}, [(f"usage.{name}", "went backwards")])


def capped_charge(session: Record, usage: Record) -> int:
    return min(charge_for(usage, session["prices"]), session["budget"])


def on_usage(session: Record, seq: int, usage: Record, now: int,
             elapsed_ms: int | None = None) -> UsageDecision:
    """Acknowledge one cumulative usage report (or refuse it, changing nothing).

    `elapsed_ms`: the time since the last report on a monotonic clock, where the caller
    has one (the metering stream that carried both reports); otherwise the wall clock's
    `now - last_report_ms`, which a clock step distorts."""
    require_open(session)
    usage = check_usage(usage, "usage")
    if session["stop_reason"]:
        raise precondition("USAGE_AFTER_STOP", "the broker sent STOP; send finish instead",
                           session_id=session["session_id"])
    if seq == session["last_seq"] and usage == session["usage"]:
        # A retransmission of the last report (e.g. after a reconnect): same answer.
        return UsageDecision(session, session["charged"], session["budget"] - session["charged"])
    if now >= session["expire_ms"]:
        # The hold timed out: the session settles on what was acknowledged before (as a
        # late finish does), whether or not the expiry sweep has got to it yet.
        raise precondition("VOUCHER_EXPIRED", "the hold timed out; usage is no longer "
                           "accepted and the session settles on the acknowledged usage",
                           session_id=session["session_id"])
    if seq != session["last_seq"] + 1:
        raise BrokerError(Code.INVALID_ARGUMENT, "USAGE_OUT_OF_ORDER",
                          f"expected report seq {session['last_seq'] + 1}, got {seq}",
                          {"expected_seq": str(session["last_seq"] + 1)},
                          [("usage.seq", "must be the previous seq plus one")])
    _check_monotonic(session["usage"], usage)
    charged = capped_charge(session, usage)
    budget, interval = session["budget"], session["report_interval_ms"]
    elapsed = now - session["last_report_ms"] if elapsed_ms is None else elapsed_ms
    # No time seen to pass (a wall clock stepped back, or two reports in one ms): no
    # rate to project from, so the time projection alone decides.
    rate_projection = (-(-(charged - session["charged"]) * interval // elapsed)
                       if elapsed > 0 else 0)
    time_projection = -(-interval * session["prices"]["gpu_second_price"] // 1000)
    stop = ""
    # ">=": the worker needs up to one interval to obey STOP, and that interval must
    # still fit in the hold, so stop when the next one would reach it.
    if charged + max(rate_projection, time_projection) >= budget:
        stop = BUDGET_EXHAUSTED
    elif now + interval >= session["expire_ms"]:
        stop = HOLD_EXPIRING
    updated = {**session, "usage": usage, "last_seq": seq, "charged": charged,
               "last_report_ms": now, "stop_reason": stop}
    return UsageDecision(updated, charged, budget - charged, stop)


def on_finish(session: Record, usage: Record) -> Record:
    """The session with its final usage and charge, ready to settle."""
    require_open(session)
    usage = check_usage(usage, "usage")
    _check_monotonic(session["usage"], usage)
    return {**session, "usage": usage, "charged": capped_charge(session, usage)}
