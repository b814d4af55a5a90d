"""Estimates and ranking of offers for a job: pure functions, no storage.

Estimates (integers throughout):
- GPU time: the job's stated gpu_ms; otherwise each recent job of the worker and model
  scaled to this job's tokens (ceil(gpu_ms * tokens / its tokens)), and of those the
  least (low), the median (expected) and the 95th percentile (high). No history and
  no stated time: 0, so only tokens and the call are priced.
- cost: the money rule (money.charge_for) on {GPU time, the stated tokens, one call}
  at the offer's prices, once for each GPU-time figure; so low <= expected <= high.
- latency: p50 and p95 of the recent jobs' completion times (nearest rank).

Ranking: an offer is eligible when it meets the latency target (its p95 is within it;
an offer with no history does not meet a stated target) and its expected cost is
within max_cost. Eligible offers come first, ordered by
  1. model size (parameter count; unknown sizes last): no overpaying for an oversized
     model when a smaller acceptable one meets the target,
  2. expected cost,
  3. the agent's model preference,
  4. p50 latency (unknown last),
  5. worker id (so the order is total and repeatable);
then the ineligible offers in the same order. The best offer is the first eligible.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.money import charge_for

from ..store.base import Record

UNKNOWN = 2**63


def nearest_rank(sorted_values: Sequence[int], percent: int) -> int:
    """The nearest-rank percentile of a non-empty ascending list."""
    rank = max(1, -(-percent * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def gpu_ms_estimates(job: Record, history: list[Record]) -> tuple[int, int, int]:
    if job["gpu_ms"]:
        return job["gpu_ms"], job["gpu_ms"], job["gpu_ms"]
    tokens = job["input_tokens"] + job["output_tokens"]
    scaled = sorted(-(-s["gpu_ms"] * tokens // (s["input_tokens"] + s["output_tokens"]))
                    for s in history if s["input_tokens"] + s["output_tokens"])
    if not scaled:
        return 0, 0, 0
    return scaled[0], nearest_rank(scaled, 50), nearest_rank(scaled, 95)


def cost_estimate(job: Record, prices: Record, history: list[Record]) -> Record:
    low, expected, high = (
        charge_for({"gpu_ms": gpu_ms, "input_tokens": job["input_tokens"],
                    "output_tokens": job["output_tokens"], "calls": 1}, prices)
        for gpu_ms in gpu_ms_estimates(job, history))
    return {"low": low, "expected": expected, "high": high}


def latency_estimate(history: list[Record]) -> Record:
    durations = sorted(s["duration_ms"] for s in history)
    if not durations:
        return {"p50_ms": 0, "p95_ms": 0, "samples": 0}
    return {"p50_ms": nearest_rank(durations, 50), "p95_ms": nearest_rank(durations, 95),
            "samples": len(durations)}


def offer(job: Record, worker: Record, model: str, history: list[Record]) -> Record:
    """One candidate offer: the worker's prices, estimates, and whether it is eligible."""
    cost = cost_estimate(job, worker["prices"], history)
    latency = latency_estimate(history)
    target, max_cost = job["latency_target_ms"], job["max_cost"]
    meets = not target or (latency["samples"] > 0 and latency["p95_ms"] <= target)
    within = not max_cost or cost["expected"] <= max_cost
    caps = worker["capabilities"]
    return {"worker_id": worker["worker_id"], "endpoint": worker["endpoint"], "model": model,
            "model_parameters": caps.get("model_sizes", {}).get(model, 0),
            "resource_class": caps["resource_class"], "prices": dict(worker["prices"]),
            "cost": cost, "latency": latency, "meets_latency_target": meets,
            "within_max_cost": within, "eligible": meets and within}


def rank(job: Record, offers: list[Record]) -> list[Record]:
    """Offers best first (see module rule), each with its 1-based rank."""
    preference = {model: i for i, model in enumerate(job["models"])}

    def key(o: Record) -> tuple:
        return (not o["eligible"], o["model_parameters"] or UNKNOWN, o["cost"]["expected"],
                preference.get(o["model"], 0),
                o["latency"]["p50_ms"] if o["latency"]["samples"] else UNKNOWN, o["worker_id"])

    ranked = sorted(offers, key=key)
    return [{**o, "rank": i} for i, o in enumerate(ranked, start=1)]
