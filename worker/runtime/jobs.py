"""What a job is (`JobSpec`), how it reports back (`JobContext`), and how it ends early
(`Cancelled`, `JobFailed`).

The runtime never talks to the network or the broker: the caller owns a `JobContext`,
passes it in, and turns its callbacks and counters into stream messages and usage reports.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

JobKind = Literal["generate", "burn", "handler"]

MAX_NEW_TOKENS = 4096
# A prompt is truncated to the model's context anyway; this only bounds memory per request.
MAX_PROMPT_CHARS = 1_000_000
_HANDLER_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z][\w]*$")


class Cancelled(Exception):
    """The job stopped because its `cancel` event was set (agent STOP, broker stop, shutdown)."""


class JobFailed(Exception):
    """The job could not run or did not finish. The message is safe to show to the agent:
    it never holds a traceback, a file path or a secret. The original error, when there is
    one, is chained as `__cause__` for the worker's own logs."""


@dataclass
class JobSpec:
    """One job. Only the fields of its `kind` matter; `validate()` checks them."""

    kind: JobKind
    # generate
    model: str = ""
    prompt: str = ""
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0  # sampling seed (the weights have their own fixed seed)
    # burn: stops at whichever limit comes first; at least one must be > 0
    duration_ms: int = 0
    flops: int = 0
    # handler
    handler: str = ""  # "package.module:function"
    input: bytes = b""

    def validate(self) -> None:
        """Raise JobFailed("invalid job: ...") when the spec cannot run."""
        if self.kind == "generate":
            _require(bool(self.model), "model is required")
            _require(isinstance(self.prompt, str), "prompt must be text")
            _require(len(self.prompt) <= MAX_PROMPT_CHARS,
                     f"prompt is longer than {MAX_PROMPT_CHARS} characters")
            _require(_is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
                     f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}")
            _require(isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                     and self.temperature >= 0, "temperature must be a finite number >= 0")
            _require(_is_int(self.seed) and 0 <= self.seed < 2**63,
                     "seed must be an integer in [0, 2^63)")
        elif self.kind == "burn":
            _require(_is_int(self.duration_ms) and self.duration_ms >= 0,
                     "duration_ms must be an integer >= 0")
            _require(_is_int(self.flops) and self.flops >= 0, "flops must be an integer >= 0")
            _require(self.duration_ms > 0 or self.flops > 0,
                     "one of duration_ms and flops must be > 0")
        elif self.kind == "handler":
            _require(isinstance(self.handler, str) and bool(_HANDLER_PATH.match(self.handler)),
                     "handler must look like 'package.module:function'")
            _require(isinstance(self.input, bytes), "input must be bytes")
        else:
            raise JobFailed(f"invalid job: unknown kind {str(self.kind)[:40]!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise JobFailed(f"invalid job: {message}")


def _ignore_output(text: str, token_ids: list[int]) -> None:
    pass


@dataclass
class JobContext:
    """The job's line back to its caller.

    `cancel` is set by the caller (any thread); the job polls it with `check_cancelled()`.
    `on_output` is called from the job thread for each piece of output; the caller makes it
    thread-safe. `input_tokens` and `output_tokens` are cumulative and written by the job
    thread only, so a meter thread may read them at any time without a lock.
    """

    cancel: threading.Event = field(default_factory=threading.Event)
    on_output: Callable[[str, list[int]], None] = _ignore_output
    input_tokens: int = 0
    output_tokens: int = 0

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("job cancelled")

    def emit(self, text: str, token_ids: Iterable[int] = ()) -> None:
        self.on_output(text, list(token_ids))

    def count_tokens(self, input: int = 0, output: int = 0) -> None:
        # Counters are cumulative usage that is billed: they may only grow.
        if input < 0 or output < 0:
            raise ValueError("token counts cannot be negative")
        self.input_tokens += input
        self.output_tokens += output
