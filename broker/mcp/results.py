"""What the tools return: typed results (each field described for the model, and an
output schema for the host) built from the broker's messages. Amounts are integer
micro-credits (1 credit = 1,000,000)."""

from __future__ import annotations

from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from ..v1 import pricing_service_pb2 as pricing_pb
from ..v1 import resources_pb2 as res_pb

PRICE_NAMES = ("gpu_second_price", "input_tokens_1k_price", "output_tokens_1k_price",
               "call_price")
USAGE_NAMES = ("gpu_ms", "input_tokens", "output_tokens", "calls")


def when(ts: Timestamp) -> str:
    """RFC 3339 UTC, or "" when unset."""
    return ts.ToJsonString() if ts.seconds or ts.nanos else ""


def prices(sheet: res_pb.PriceSheet) -> dict[str, int]:
    return {name: getattr(sheet, name) for name in PRICE_NAMES}


def usage(u: res_pb.Usage) -> dict[str, int]:
    return {name: getattr(u, name) for name in USAGE_NAMES}


class Offer(BaseModel):
    rank: int = Field(description="1 is the best offer for this job.")
    worker_id: str = Field(description="Pass to run_job as worker_id to use this offer.")
    model: str
    resource_class: str = Field(description="The worker's hardware class.")
    prices: dict[str, int] = Field(description="Unit prices in micro-credits: per GPU-second, "
                                   "per 1,000 input and output tokens, per call.")
    cost_low: int = Field(description="Estimated cost, best case (micro-credits).")
    cost_expected: int = Field(description="Estimated cost, typical case (micro-credits).")
    cost_high: int = Field(description="Estimated cost, 95th percentile (micro-credits).")
    latency_p50_ms: int = Field(description="Median completion time; 0 when unknown.")
    latency_p95_ms: int = Field(description="95th percentile completion time; 0 when unknown.")
    history_jobs: int = Field(description="Recent jobs the estimates are measured on; 0 "
                              "means no history: the cost estimate leaves out GPU time, so "
                              "allow a margin.")
    within_max_spend: bool = Field(description="The expected cost fits max_spend.")
    eligible: bool = Field(description="Fits max_spend and the latency target: run_job "
                           "would pick among these.")


class QuoteResult(BaseModel):
    quote_id: str
    expires_at: str = Field(description="Until when the prices are locked (RFC 3339).")
    offers: list[Offer] = Field(description="Live offers, best first.")


def quote_result(quote: pricing_pb.Quote) -> QuoteResult:
    return QuoteResult(quote_id=quote.quote_id, expires_at=when(quote.expire_time), offers=[
        Offer(rank=o.rank, worker_id=o.worker_id, model=o.model,
              resource_class=o.resource_class, prices=prices(o.prices), cost_low=o.cost.low,
              cost_expected=o.cost.expected, cost_high=o.cost.high,
              latency_p50_ms=o.latency.p50_ms, latency_p95_ms=o.latency.p95_ms,
              history_jobs=o.latency.samples,
              within_max_spend=o.within_max_cost, eligible=o.eligible)
        for o in quote.offers])


class JobResult(BaseModel):
    status: Literal["completed", "stopped", "failed", "cancelled", "waiting_for_owner"] = Field(
        description="completed: the job ran to the end. stopped: it reached max_spend and was "
        "cut off (output is partial). failed: see error. waiting_for_owner: nothing ran yet; "
        "the owner must approve (call wait_for_approval).")
    request_id: str
    authorization_id: str = Field(description="The broker's id of this job's payment.")
    output: str = Field(description="What the job produced (generated text).")
    charged: int = Field(description="Micro-credits taken from the wallet (never above "
                         "max_spend).")
    max_spend: int = Field(description="The most this job could cost.")
    released: int = Field(description="Micro-credits of max_spend given back to the wallet.")
    receipt_id: str = Field(description="The broker's signed receipt (get_receipt).")
    worker_id: str
    usage: dict[str, int] = Field(description="Metered usage the charge was computed from.")
    error: str = Field(description="What went wrong, for failed.")
    message: str = Field(description="The outcome in one sentence.")


class Receipt(BaseModel):
    receipt_id: str
    authorization_id: str
    charged: int = Field(description="Micro-credits taken from the wallet.")
    held: int = Field(description="Micro-credits that were reserved (the job's max_spend).")
    released: int = Field(description="held minus charged, given back to the wallet.")
    worker_payout: int = Field(description="Part of the charge paid to the provider.")
    platform_fee: int = Field(description="Part of the charge kept as the platform fee.")
    outcome: str = Field(description="FINISHED, STOPPED (reached the hold) or HOLD_EXPIRED.")
    settled_at: str = Field(description="When the broker settled it (RFC 3339).")
    usage: dict[str, int]
    prices: dict[str, int]
    signing_key_id: str = Field(description="Broker key that signed the receipt.")


def receipt(r: res_pb.Receipt) -> Receipt:
    return Receipt(receipt_id=r.receipt_id, authorization_id=r.authorization_id,
                   charged=r.charged, held=r.held, released=r.released,
                   worker_payout=r.worker_payout, platform_fee=r.platform_fee,
                   outcome=r.outcome, settled_at=when(r.settle_time), usage=usage(r.usage),
                   prices=prices(r.prices), signing_key_id=r.key_id)


class Receipts(BaseModel):
    receipts: list[Receipt] = Field(description="Newest first.")


class Limit(BaseModel):
    period: Literal["daily", "weekly", "monthly", "all_time"]
    limit: int = Field(description="Micro-credits per period set by the owner.")
    spent: int = Field(description="Spent or held in the current period.")
    left: int = Field(description="limit minus spent.")


class SpendStatus(BaseModel):
    wallet_id: str
    available: int = Field(description="Micro-credits the wallet can reserve now.")
    pending: int = Field(description="Reserved by jobs not settled yet.")
    spent_today: int
    spent_this_month: int
    limits: list[Limit] = Field(description="The owner's limits that apply (none: no limit).")
    max_per_job: int = Field(description="Most one job may reserve; 0 means no maximum.")
    approval_above: int = Field(description="Jobs above this wait for the owner's approval; "
                                "0 means never.")
    can_spend_now: int = Field(description="The largest max_spend that no limit refuses now.")
    refills_paused: bool = Field(description="The owner must resume refills after failed jobs.")
    would_refuse: list[str] = Field(description="For `amount`: each rule that would refuse it "
                                    "or make it wait, with reason; empty when it would pass.")


class Cancelled(BaseModel):
    authorization_id: str
    state: str
    released: int = Field(description="Micro-credits given back to the wallet.")


class Approval(BaseModel):
    authorization_id: str
    decision: Literal["pending", "approved", "denied", "expired", "not_needed"]
    reason: str = Field(description="The owner's reason, or why it expired.")
    deadline: str = Field(description="When an unanswered request is denied (RFC 3339).")
    message: str = Field(description="What to do next.")
