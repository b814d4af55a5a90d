"""Measured history of finished jobs, per worker and model, for quotes.

Each session that finishes normally (outcome FINISHED) leaves one sample, taken as it
settles: how long it took from redemption to settlement (the latency an agent sees,
less the trip to the worker) and its usage. The most recent MAX_SAMPLES per worker and
model are kept. Stopped, expired and failed jobs leave none: their times say nothing
about a job's length. A sample names no authorization, wallet or owner.
"""

from __future__ import annotations

from ..store.base import Record, Tx
from . import ledger

MAX_SAMPLES = 50
FINISHED = "FINISHED"


def _prefix(worker_id: str, model: str) -> str:
    # The model's length first: a model name may contain "/" and must not run into another.
    return f"{worker_id}/{len(model):02d}:{model}/"


def record(tx: Tx, ses: Record, outcome: str, now: int) -> None:
    """The sample of a session settling now with `outcome` (its final usage in `ses`)."""
    if outcome != FINISHED:
        return
    usage = ses["usage"]
    prefix = _prefix(ses["worker_id"], ses.get("model", ""))
    seq = ledger.next_seq(tx, "job_history_seq")
    tx.put("job_history", f"{prefix}{seq:020d}", {
        "duration_ms": max(0, now - ses["open_ms"]), "gpu_ms": usage["gpu_ms"],
        "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
        "settle_ms": now})
    rows = list(tx.scan("job_history", prefix=prefix, limit=MAX_SAMPLES + 1))
    if len(rows) > MAX_SAMPLES:
        tx.delete("job_history", rows[0][0])


def samples(tx: Tx, worker_id: str, model: str) -> list[Record]:
    """The recent samples of a worker and model, newest first."""
    return [row for _, row in tx.scan("job_history", prefix=_prefix(worker_id, model),
                                      reverse=True, limit=MAX_SAMPLES)]
