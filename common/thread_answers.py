"""Answer asyncio futures from another thread: one wake-up per event loop per batch of
answers, not one per future (the store's writer and the crypto threads both do this)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# (the future, its result, or the exception it gets instead)
Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


def answer_on_loops(per_loop: dict[asyncio.AbstractEventLoop, list[Answer]]) -> None:
    """Settle each loop's futures on that loop. Thread-safe."""
    for loop, answers in per_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, answers)


def _settle(answers: list[Answer]) -> None:
    for future, result, error in answers:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
