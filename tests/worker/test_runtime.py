"""The job runtime on this machine's device (CPU here, CUDA where present)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from worker.runtime import (
    Cancelled,
    JobContext,
    JobFailed,
    JobSpec,
    Runtime,
    save_checkpoint,
    tiny_lm,
)
from worker.runtime.burn import matrix_size


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime()


def generate(runtime: Runtime, prompt: str = "Hello, worker.", **kw) -> tuple[dict, JobContext]:
    ctx = JobContext()
    return runtime.run(JobSpec(kind="generate", model=kw.pop("model", "tiny-lm"),
                               prompt=prompt, **kw), ctx), ctx


# -- test handlers (allowed only where a test lists this module) -----------------------------

def shout(input: bytes, ctx: JobContext) -> str:
    return input.decode().upper()


def oom(input: bytes, ctx: JobContext) -> None:
    raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")


def not_json(input: bytes, ctx: JobContext) -> object:
    return object()


def wait_for_cancel(input: bytes, ctx: JobContext) -> None:
    while True:
        ctx.check_cancelled()
        time.sleep(0.001)


# -- generate --------------------------------------------------------------------------------

def test_device_defaults_to_what_torch_has(runtime: Runtime):
    assert runtime.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.models() == ["tiny-lm"]


def test_generate_is_deterministic_for_the_same_seed_and_prompt(runtime: Runtime):
    first, _ = generate(runtime, temperature=0.9, seed=7)
    again, _ = generate(Runtime(device=runtime.device), temperature=0.9, seed=7)
    other, _ = generate(runtime, temperature=0.9, seed=8)
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]
    greedy, _ = generate(runtime)
    assert greedy == generate(runtime)[0]


def test_generate_streams_each_token_and_counts_it(runtime: Runtime):
    emitted: list[tuple[str, list[int]]] = []
    counted: list[int] = []
    ctx = JobContext()

    def on_output(text: str, ids: list[int]) -> None:
        emitted.append((text, ids))
        counted.append(ctx.output_tokens)  # the count before this token's count_tokens

    ctx.on_output = on_output
    prompt = "Tokens: one, two\nthree."
    result = runtime.run(JobSpec(kind="generate", model="tiny-lm", prompt=prompt,
                                 max_new_tokens=40, temperature=1.0), ctx)
    assert len(emitted) == 40 == ctx.output_tokens == result["output_tokens"]
    assert ctx.input_tokens == len(prompt) == result["input_tokens"]
    assert all(len(ids) == 1 for _, ids in emitted)
    assert "".join(text for text, _ in emitted) == result["text"]
    assert counted == list(range(40))  # counted one by one, as produced
    assert all(ch in tiny_lm.VOCAB for ch in result["text"])


def test_prompt_longer_than_the_context_keeps_its_tail_and_counts_all(runtime: Runtime):
    tail = "x" * tiny_lm.CONFIG.context
    long, ctx = generate(runtime, prompt="é" * 500 + tail, max_new_tokens=4)
    assert ctx.input_tokens == 500 + len(tail)
    assert long["text"] == generate(runtime, prompt=tail, max_new_tokens=4)[0]["text"]


def test_generate_rejects_bad_specs(runtime: Runtime):
    with pytest.raises(JobFailed, match="unknown model 'gpt-9'"):
        generate(runtime, model="gpt-9")
    for bad in (0, 4097):
        with pytest.raises(JobFailed, match="max_new_tokens"):
            generate(runtime, max_new_tokens=bad)
    with pytest.raises(JobFailed, match="temperature"):
        generate(runtime, temperature=-1.0)


def test_models_are_built_once_per_runtime(monkeypatch: pytest.MonkeyPatch):
    builds = []
    real_build = tiny_lm.build_model

    def counting_build(*args, **kw):
        builds.append(1)
        return real_build(*args, **kw)

    monkeypatch.setattr(tiny_lm, "build_model", counting_build)
    fresh = Runtime()
    generate(fresh, max_new_tokens=2)
    generate(fresh, max_new_tokens=2)
    assert len(builds) == 1
    assert fresh.load_model("tiny-lm") is fresh.load_model("tiny-lm")


def test_checkpoint_round_trip_gives_identical_output(tmp_path, runtime: Runtime):
    save_checkpoint(tmp_path / "same.pt")
    other = tiny_lm.build_model(seed=1)
    save_checkpoint(tmp_path / "other.pt", other)
    loaded = Runtime(checkpoints={"same": str(tmp_path / "same.pt"),
                                  "other": str(tmp_path / "other.pt")})
    assert loaded.models() == ["other", "same", "tiny-lm"]
    builtin = generate(runtime, max_new_tokens=24, temperature=0.7, seed=3)[0]["text"]
    assert generate(loaded, model="same", max_new_tokens=24, temperature=0.7, seed=3)[0]["text"] \
        == builtin
    from_file = generate(loaded, model="other", max_new_tokens=24)[0]["text"]
    direct = tiny_lm.generate(other, tiny_lm.encode("Hello, worker."), 24, 0.0, 0, lambda t: None)
    assert from_file == tiny_lm.decode(direct)
    assert from_file != generate(runtime, max_new_tokens=24)[0]["text"]


def test_a_bad_checkpoint_fails_without_showing_its_path(tmp_path):
    path = tmp_path / "secret-dir" / "broken.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(JobFailed, match="model 'broken' could not be loaded") as info:
        generate(Runtime(checkpoints={"broken": str(path)}), model="broken")
    assert "secret-dir" not in str(info.value)


# -- cancellation ----------------------------------------------------------------------------

def run_until_cancelled(runtime: Runtime, spec: JobSpec, started: threading.Event,
                        ctx: JobContext) -> float:
    """Start `spec` in a thread, cancel once `started` is set; seconds from cancel to end."""
    outcome: list[BaseException | dict] = []
    finished_at: list[float] = []

    def job() -> None:
        try:
            outcome.append(runtime.run(spec, ctx))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)
        finished_at.append(time.perf_counter())

    thread = threading.Thread(target=job)
    thread.start()
    assert started.wait(10)
    cancelled_at = time.perf_counter()
    ctx.cancel.set()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], Cancelled), outcome
    return finished_at[0] - cancelled_at


def test_cancel_stops_generate_quickly(runtime: Runtime):
    started = threading.Event()
    ctx = JobContext(on_output=lambda text, ids: started.set())
    spec = JobSpec(kind="generate", model="tiny-lm", prompt="go", max_new_tokens=4096)
    assert run_until_cancelled(runtime, spec, started, ctx) < 0.2
    assert 0 < ctx.output_tokens < 4096


def test_cancel_stops_burn_quickly(runtime: Runtime):
    started = threading.Event()
    threading.Timer(0.15, started.set).start()
    spec = JobSpec(kind="burn", duration_ms=10_000)
    assert run_until_cancelled(runtime, spec, started, JobContext()) < 0.2


def test_a_job_cancelled_before_it_starts_does_not_run(runtime: Runtime):
    ctx = JobContext()
    ctx.cancel.set()
    with pytest.raises(Cancelled):
        runtime.run(JobSpec(kind="burn", duration_ms=10_000), ctx)


# -- burn ------------------------------------------------------------------------------------

def test_burn_by_duration_runs_about_that_long(runtime: Runtime):
    start = time.perf_counter()
    result = runtime.run(JobSpec(kind="burn", duration_ms=300), JobContext())
    elapsed = time.perf_counter() - start
    assert 0.3 <= elapsed < 0.55
    assert result["iterations"] > 0
    n = matrix_size(torch.device(runtime.device))
    assert result["flops"] == result["iterations"] * 2 * n**3


def test_burn_by_flops_reaches_the_flop_count(runtime: Runtime):
    per_matmul = 2 * matrix_size(torch.device(runtime.device))**3
    target = 10 * per_matmul + 1
    result = runtime.run(JobSpec(kind="burn", flops=target), JobContext())
    assert result == {"flops": 11 * per_matmul, "iterations": 11}


def test_burn_needs_a_limit(runtime: Runtime):
    with pytest.raises(JobFailed, match="one of duration_ms and flops"):
        runtime.run(JobSpec(kind="burn"), JobContext())


# -- handlers --------------------------------------------------------------------------------

def handler(runtime: Runtime, path: str, payload: bytes = b"", ctx: JobContext | None = None):
    return runtime.run(JobSpec(kind="handler", handler=path, input=payload), ctx or JobContext())


def test_echo_handler_streams_and_counts(runtime: Runtime):
    out: list[str] = []
    ctx = JobContext(on_output=lambda text, ids: out.append(text))
    result = handler(runtime, "worker.runtime.example_handlers:echo", b"pay per word", ctx)
    assert result == {"result": {"words": 3}}
    assert out == ["PAY", " PER", " WORD"]
    assert (ctx.input_tokens, ctx.output_tokens) == (3, 3)


def test_failing_handler_gives_its_type_and_message_only(runtime: Runtime):
    with pytest.raises(JobFailed) as info:
        handler(runtime, "worker.runtime.example_handlers:fail")
    assert str(info.value) == "handler raised ValueError: this handler always fails"


@pytest.mark.parametrize("path", [
    "worker.runtime.example_handlers:nope",
    "worker.runtime.no_such_module:echo",
    "os:getcwd",  # importable, but not an allowed handler module
    "tests.worker.test_runtime:shout",
])
def test_unknown_handlers_fail(runtime: Runtime, path: str):
    with pytest.raises(JobFailed, match="unknown handler"):
        handler(runtime, path)


@pytest.mark.parametrize("path", ["no colon here", "worker.runtime.example_handlers:_private",
                                  "os.path:join; rm -rf /"])
def test_malformed_handler_path_is_invalid(runtime: Runtime, path: str):
    with pytest.raises(JobFailed, match="invalid job"):
        handler(runtime, path)


def test_allowed_handler_modules_are_configurable():
    custom = Runtime(handler_modules=["tests.worker"])
    assert handler(custom, "tests.worker.test_runtime:shout", b"hi") == {"result": "HI"}
    with pytest.raises(JobFailed, match="out of memory"):
        handler(custom, "tests.worker.test_runtime:oom")
    with pytest.raises(JobFailed, match="not JSON"):
        handler(custom, "tests.worker.test_runtime:not_json")
    started = threading.Event()
    threading.Timer(0.05, started.set).start()
    spec = JobSpec(kind="handler", handler="tests.worker.test_runtime:wait_for_cancel")
    assert run_until_cancelled(custom, spec, started, JobContext()) < 0.2


def test_token_counts_only_grow():
    ctx = JobContext()
    ctx.count_tokens(input=2, output=1)
    with pytest.raises(ValueError):
        ctx.count_tokens(output=-1)
    assert (ctx.input_tokens, ctx.output_tokens) == (2, 1)
