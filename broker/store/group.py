"""Several operations as one: `independently(ops)` is an op that runs each of `ops` in
its own write overlay, so they all land in one durable commit while each succeeds or
fails alone (an op that raises is dropped whole, its neighbours' writes stand). Any
store runs it: it needs only the `Tx` interface.

Why: a worker's metering batch (MeterWorker) carries many sessions' reports; one commit
per batch is the point of batching, and one bad report must not refuse its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from broker.store.base import Tx
from broker.store.buffered import BufferedTx


def independently(ops: Sequence[Callable[[Tx], Any]]) -> Callable[[Tx], list[Any]]:
    """One op returning, per op of `ops` in order, its result or the Exception it raised."""

    def run(tx: Tx) -> list[Any]:
        outcomes: list[Any] = []
        for op in ops:
            overlay = BufferedTx(tx)
            try:
                result = op(overlay)
            except Exception as error:  # only this op fails: drop its overlay
                outcomes.append(error)
                continue
            overlay.flush()
            outcomes.append(result)
        return outcomes

    return run
