"""A compute burn: repeated matrix multiplies, for metered-time jobs and meter checks.

Work runs in chunks of about `CHUNK_S` of device time; between chunks the job checks for
cancellation, so a STOP takes effect within about one chunk. On CUDA each chunk ends with
a synchronize: the chunk's time is then real device time, and no queued work outlives a
cancel.
"""

from __future__ import annotations

import math
import time

import torch

from .jobs import JobContext

CHUNK_S = 0.02
_MAX_MATMULS_PER_CHUNK = 10_000


def matrix_size(device: torch.device) -> int:
    # Big enough to keep a GPU busy, small enough that one matmul is a few ms on a CPU.
    return 4096 if device.type == "cuda" else 512


def burn(device: torch.device, duration_ms: int, flops: int, ctx: JobContext) -> dict:
    """Multiply until `duration_ms` of wall time has passed or `flops` are done, whichever
    comes first (a limit of 0 is no limit). Flops are counted as 2*n^3 per matmul and done
    in whole matmuls, so the flop limit may be passed by less than one matmul."""
    n = matrix_size(device)
    per_matmul = 2 * n**3
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=generator)
    b = torch.randn(n, n, device=device, generator=generator)
    c = torch.empty(n, n, device=device)
    start = time.perf_counter()
    deadline = start + duration_ms / 1000 if duration_ms > 0 else math.inf
    iterations = 0
    per_chunk = 1
    seconds_per_matmul = 0.0
    while True:
        ctx.check_cancelled()
        now = time.perf_counter()
        if now >= deadline or (flops > 0 and iterations * per_matmul >= flops):
            break
        count = per_chunk
        if flops > 0:
            count = min(count, -(-(flops - iterations * per_matmul) // per_matmul))
        if seconds_per_matmul > 0 and deadline < math.inf:
            count = min(count, max(1, math.ceil((deadline - now) / seconds_per_matmul)))
        for _ in range(count):
            torch.mm(a, b, out=c)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - now
        iterations += count
        # Adapt the chunk to the measured speed so each one lasts about CHUNK_S.
        seconds_per_matmul = max(elapsed / count, 1e-9)
        per_chunk = max(1, min(_MAX_MATMULS_PER_CHUNK, int(CHUNK_S / seconds_per_matmul)))
    return {"flops": iterations * per_matmul, "iterations": iterations}
