"""Models of other sizes from checkpoints, and the parameter counts a worker advertises
(automatic selection prefers the smallest acceptable model that meets the target)."""

from __future__ import annotations

import pytest
import torch

from common.settings import SettingsError
from worker.config import DEFAULT_PRICES, SCHEMA
from worker.runtime import JobContext, JobSpec, Runtime, save_checkpoint, tiny_lm

SMALL = tiny_lm.Config(d_model=32, n_heads=2, n_layers=1, d_mlp=64)


def test_a_smaller_checkpoint_loads_runs_and_is_counted(tmp_path):
    small = tiny_lm.build_model(seed=5, cfg=SMALL)
    save_checkpoint(tmp_path / "small.pt", small)
    torch.save(tiny_lm.build_model().state_dict(), tmp_path / "bare.pt")  # the old format
    runtime = Runtime(checkpoints={"small": str(tmp_path / "small.pt"),
                                   "bare": str(tmp_path / "bare.pt")})
    sizes = runtime.model_sizes()
    builtin = tiny_lm.parameter_count(tiny_lm.build_model())
    assert sizes == {"small": tiny_lm.parameter_count(small), "bare": builtin,
                     "tiny-lm": builtin}
    assert sizes["small"] < builtin // 10
    ctx = JobContext()
    result = runtime.run(JobSpec(kind="generate", model="small", prompt="Hi", max_new_tokens=5),
                         ctx)
    direct = tiny_lm.generate(small, tiny_lm.encode("Hi"), 5, 0.0, 0, lambda t: None)
    assert result["text"] == tiny_lm.decode(direct) and ctx.output_tokens == 5


def test_a_model_that_fails_to_load_has_no_size(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"nope")
    runtime = Runtime(checkpoints={"broken": str(tmp_path / "broken.pt")})
    assert set(runtime.model_sizes()) == {"tiny-lm"}


def test_the_price_sheet_in_the_config_file(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text("[prices]\nreserved_hour_price = 7\nunused_reserved_bps = 10000\n")
    assert SCHEMA.load(str(path)).settings.prices == {
        **DEFAULT_PRICES, "reserved_hour_price": 7, "unused_reserved_bps": 10_000}
    for bad, why in (("unused_reserved_bps = 10001", "between 0 and 10000"),
                     ("reserved_hour_price = -1", "non-negative integers"),
                     ("per_minute_price = 3", "['per_minute_price']"),
                     ("call_price = true", "int values")):
        path.write_text(f"[prices]\n{bad}\n")
        with pytest.raises(SettingsError) as caught:
            SCHEMA.load(str(path))
        assert why in str(caught.value), bad
