"""`Runtime`: runs one job to the end on one device, blocking; the caller runs it in a
thread, reads the context's counters from a meter thread, and sets `ctx.cancel` to stop."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import torch

from . import tiny_lm
from .burn import burn
from .handlers import DEFAULT_HANDLER_MODULES, resolve, run_handler
from .jobs import Cancelled, JobContext, JobFailed, JobSpec

BUILTIN_MODEL = "tiny-lm"


class Runtime:
    """Jobs on one device. Models are loaded once per (name, device) and kept.

    `checkpoints` maps model names to local state_dict files of the tiny LM (a name may
    shadow the built-in "tiny-lm"). `handler_modules` lists the modules (and their
    submodules) whose functions handler jobs may call.
    """

    def __init__(
        self,
        device: str | None = None,
        checkpoints: dict[str, str] | None = None,
        handler_modules: Iterable[str] = DEFAULT_HANDLER_MODULES,
    ):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._torch_device = torch.device(self.device)
        self._checkpoints = dict(checkpoints or {})
        self._handler_modules = tuple(handler_modules)
        self._models: dict[tuple[str, str], tiny_lm.TinyLM] = {}
        # Two jobs asking for the same model at once must not both build it.
        self._models_lock = threading.Lock()

    def models(self) -> list[str]:
        return sorted({BUILTIN_MODEL, *self._checkpoints})

    def model_sizes(self) -> dict[str, int]:
        """Each model's parameter count (loading every model now); a model that fails
        to load is left out: its size is unknown, and its jobs fail as before."""
        sizes = {}
        for name in self.models():
            try:
                sizes[name] = tiny_lm.parameter_count(self.load_model(name))
            except JobFailed:
                continue
        return sizes

    def load_model(self, name: str) -> tiny_lm.TinyLM:
        """The model `name` on this runtime's device, built or loaded on first use."""
        if name not in self.models():
            raise JobFailed(f"unknown model {name[:100]!r}; available: {', '.join(self.models())}")
        key = (name, self.device)
        with self._models_lock:
            model = self._models.get(key)
            if model is None:
                model = self._build(name).to(self._torch_device)
                self._models[key] = model
            return model

    def _build(self, name: str) -> tiny_lm.TinyLM:
        path = self._checkpoints.get(name)
        if path is None:
            return tiny_lm.build_model()
        try:
            return tiny_lm.load_checkpoint(path)
        except Exception as error:
            # No path in the message: it is worker configuration, not the agent's business.
            raise JobFailed(f"model {name!r} could not be loaded "
                            f"({type(error).__name__})") from error

    def run(self, spec: JobSpec, ctx: JobContext) -> dict:
        """Run `spec` to the end. Returns its summary; raises Cancelled or JobFailed."""
        spec.validate()
        ctx.check_cancelled()
        try:
            if spec.kind == "generate":
                return self._generate(spec, ctx)
            if spec.kind == "burn":
                return burn(self._torch_device, spec.duration_ms, spec.flops, ctx)
            function = resolve(spec.handler, self._handler_modules)
            return run_handler(function, spec.input, ctx)
        except (Cancelled, JobFailed):
            raise
        except (torch.cuda.OutOfMemoryError, MemoryError) as error:
            raise self._out_of_memory() from error
        except RuntimeError as error:
            if "out of memory" in str(error):
                raise self._out_of_memory() from error
            raise JobFailed(f"job failed ({type(error).__name__})") from error
        except Exception as error:
            raise JobFailed(f"job failed ({type(error).__name__})") from error

    def _out_of_memory(self) -> JobFailed:
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()  # give the next job the memory this one held
        return JobFailed(f"out of memory on {self._torch_device.type}")

    def _generate(self, spec: JobSpec, ctx: JobContext) -> dict:
        model = self.load_model(spec.model)
        prompt_ids = tiny_lm.encode(spec.prompt)
        ctx.count_tokens(input=len(prompt_ids))

        def on_token(token: int) -> None:
            ctx.emit(tiny_lm.VOCAB[token], [token])
            ctx.count_tokens(output=1)
            ctx.check_cancelled()

        ctx.check_cancelled()
        out = tiny_lm.generate(model, prompt_ids, spec.max_new_tokens, spec.temperature,
                               spec.seed, on_token)
        return {"text": tiny_lm.decode(out), "input_tokens": len(prompt_ids),
                "output_tokens": len(out)}
