"""Worker settings: one TOML file, overridden by command-line flags.

    broker = "127.0.0.1:50051"
    listen = "127.0.0.1:50052"
    api_key_file = "var/worker/api-key"       # the worker's broker API key (role worker)
    state_dir = "var/worker"                  # usage key, worker id, result cache
    advertise = ""                            # endpoint agents use; defaults to listen
    report_every_tokens = 64
    max_concurrent_jobs = 1
    handler_modules = ["worker.runtime.example_handlers"]  # handler jobs may call these
    drain_timeout_s = 30.0                    # on SIGTERM: how long running jobs may finish
    tls_cert = ""                             # serve agents over TLS: PEM certificate chain
    tls_key = ""                              # ... and its private key (mode 0600)
    tls_client_ca = ""                        # require agent certificates from this CA (mTLS)
    broker_ca = ""                            # reach the broker over TLS, verified with this CA
    broker_client_cert = ""                   # present this certificate to the broker (mTLS)
    broker_client_key = ""                    # ... and its private key (mode 0600)

    [prices]                                  # integer micro-credits
    gpu_second_price = 1000
    input_tokens_1k_price = 200
    output_tokens_1k_price = 600
    call_price = 50

    [checkpoints]                             # extra models: name = checkpoint file
    # my-lm = "/models/my-lm.pt"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import tls
from broker.core.money import PRICE_FIELDS

DEFAULT_PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 200,
                  "output_tokens_1k_price": 600, "call_price": 50}


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
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    broker_ca: str = ""
    broker_client_cert: str = ""
    broker_client_key: str = ""
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

    def server_tls(self) -> tls.ServerTls | None:
        """TLS for the agent-facing server (None: plaintext); raises tls.TlsError."""
        return tls.load_server(self.tls_cert, self.tls_key, self.tls_client_ca)

    def broker_tls(self) -> tls.ClientTls | None:
        """TLS for the link to the broker (None: plaintext); raises tls.TlsError."""
        return tls.load_client(self.broker_ca, self.broker_client_cert,
                               self.broker_client_key)


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
    bad = [k for k in prices if k not in PRICE_FIELDS or not isinstance(prices[k], int)
           or prices[k] < 0]
    if bad:
        raise ConfigError(f"prices must be non-negative integers named {PRICE_FIELDS}: {bad}")
    config.prices = prices
    return config
