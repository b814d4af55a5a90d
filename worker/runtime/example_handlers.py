"""Example handlers, for tests and docs. A handler is `function(input, ctx) -> JSON-able`."""

from __future__ import annotations

from .jobs import JobContext


def echo(input: bytes, ctx: JobContext) -> dict:
    """Emit the input upper-cased, word by word: one input token per word read and one
    output token per word written."""
    words = input.decode("utf-8", errors="replace").split()
    ctx.count_tokens(input=len(words))
    for i, word in enumerate(words):
        ctx.check_cancelled()
        ctx.emit(("" if i == 0 else " ") + word.upper())
        ctx.count_tokens(output=1)
    return {"words": len(words)}


def fail(input: bytes, ctx: JobContext) -> None:
    """Always fails, to show how a handler's error reaches the agent."""
    raise ValueError("this handler always fails")
