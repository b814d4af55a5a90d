"""Worker settings: one TOML file, overridden by command-line flags.

    broker = "127.0.0.1:50051"
    listen = "127.0.0.1:50052"
    api_key_file = "var/worker/api-key"       # the worker's broker API key (role worker)
    state_dir = "var/worker"                  # usage key, worker id, result cache
    advertise = ""                            # endpoint agents use; defaults to listen
    report_every_tokens = 64
    max_concurrent_jobs = 1
    handler_modules = ["worker.runtime.example_handlers"]  # handler jobs may call these

    [prices]                                  # integer micro-credits (docs/pricing.md)
    gpu_second_price = 1000                   # metered time, billed per GPU-millisecond
    input_tokens_1k_price = 200               # per-inference: per 1,000 tokens in
    output_tokens_1k_price = 600              # ... and out
    call_price = 50                           # ... and per call
    reserved_hour_price = 2_880_000           # a lease of the whole worker, per hour (0: none)
    unused_reserved_bps = 5_000               # leased time no job used costs this share

    [checkpoints]                             # extra models: name = checkpoint file
    # my-lm = "/models/my-lm.pt"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core.errors import BrokerError
from broker.core.money import SHEET_FIELDS, check_price_sheet

# A lease costs 80% of metered time (2.88M/h = 800/s), and unused leased time half that.
DEFAULT_PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 200,
                  "output_tokens_1k_price": 600, "call_price": 50,
                  "reserved_hour_price": 2_880_000, "unused_reserved_bps": 5_000}


class ConfigError(Exception):
    pass


@dataclass
class WorkerConfig:
    broker: str = "127.0.0.1:50051"
    listen: str = "127.0.0.1:50052"
    advertise: str = ""
    api_key_file: str = "var/worker/api-key"
    state_dir: str = "var/worker"
    report_every_tokens: int = 64
    max_concurrent_jobs: int = 1
    drain_timeout_s: float = 30.0
    prices: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    checkpoints: dict[str, str] = field(default_factory=dict)
    handler_modules: list[str] = field(default_factory=lambda: [
        "worker.runtime.example_handlers"])

    @property
    def endpoint(self) -> str:
        return self.advertise or self.listen

    def api_key(self) -> str:
        path = Path(self.api_key_file)
        if not path.exists():
            raise ConfigError(f"API key file {path} not found (a key with role worker)")
        return path.read_text().strip()


def load(path: str | None, overrides: dict[str, Any]) -> WorkerConfig:
    values: dict[str, Any] = {}
    if path:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(WorkerConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    config = WorkerConfig(**values)
    prices = {**DEFAULT_PRICES, **config.prices}
    bad = [k for k in prices if k not in SHEET_FIELDS or not isinstance(prices[k], int)
           or isinstance(prices[k], bool) or prices[k] < 0]
    if bad:
        raise ConfigError(f"prices must be non-negative integers named {SHEET_FIELDS}: {bad}")
    try:
        config.prices = check_price_sheet(prices, "prices")
    except BrokerError as error:
        raise ConfigError(error.message) from None
    return config
