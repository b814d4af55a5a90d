"""Handler jobs: a function named "package.module:function", called as
`function(input: bytes, ctx: JobContext)` and returning a JSON-able result.

Only modules in the runtime's allowlist can be named. The agent chooses the handler path,
so without it an agent could call any importable function with its own bytes (for
example `shutil:rmtree`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from .jobs import Cancelled, JobContext, JobFailed

Handler = Callable[[bytes, JobContext], Any]
DEFAULT_HANDLER_MODULES = ("worker.runtime.example_handlers",)
_MAX_MESSAGE = 500


def resolve(path: str, allowed_modules: Iterable[str]) -> Handler:
    """The function at "module:function", or JobFailed("unknown handler ...")."""
    module_name, _, attr = path.partition(":")
    unknown = JobFailed(f"unknown handler {path[:200]!r}")
    allowed = any(module_name == m or module_name.startswith(m + ".") for m in allowed_modules)
    if not allowed or not attr or attr.startswith("_"):
        raise unknown
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise unknown from error
    except Exception as error:  # the module's own import-time code failed
        raise JobFailed(f"handler {path[:200]!r} failed to load "
                        f"({type(error).__name__})") from error
    function = getattr(module, attr, None)
    if not callable(function):
        raise unknown
    return function


def run_handler(function: Handler, payload: bytes, ctx: JobContext) -> dict:
    """Call the handler and wrap its result as {"result": ...}. Its exceptions become
    JobFailed with the type and message only (no traceback); Cancelled passes through."""
    try:
        result = function(payload, ctx)
    except (Cancelled, JobFailed, MemoryError):
        raise
    except (Exception, SystemExit) as error:
        if "out of memory" in str(error):
            raise  # mapped to "out of memory" by the runtime, like any other job
        message = str(error)[:_MAX_MESSAGE]
        raise JobFailed(f"handler raised {type(error).__name__}: {message}") from error
    try:
        json.dumps(result)
    except (TypeError, ValueError) as error:
        raise JobFailed("handler returned a result that is not JSON") from error
    return {"result": result}
