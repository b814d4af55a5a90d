"""The worker's job runtime: runs generate, burn and handler jobs on one device (CUDA when
present, else CPU), streams output through a `JobContext`, and stops on cancel.

    runtime = Runtime()
    ctx = JobContext(cancel=threading.Event(), on_output=lambda text, ids: ...)
    summary = runtime.run(JobSpec(kind="generate", model="tiny-lm", prompt="hi"), ctx)
"""

from .engine import BUILTIN_MODEL, Runtime
from .jobs import Cancelled, JobContext, JobFailed, JobKind, JobSpec
from .tiny_lm import save_checkpoint

__all__ = [
    "BUILTIN_MODEL",
    "Cancelled",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobSpec",
    "Runtime",
    "save_checkpoint",
]
