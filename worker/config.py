"""Worker settings: defaults < one TOML file < WORKER_* variables < flags.

    broker = "127.0.0.1:50051"
    broker_order = "spread"                   # several brokers: one at random; "listed": the first
    listen = "127.0.0.1:50052"
    api_key_file = "var/worker/api-key"       # the worker's broker API key (role worker)
    state_dir = "var/worker"                  # usage key, worker id, result cache
    advertise = ""                            # endpoint agents use; defaults to listen
    report_every_tokens = 64
    max_concurrent_jobs = 1
    handler_modules = ["worker.runtime.example_handlers"]  # handler jobs may call these
    broker_ca = ""                            # reach the broker over TLS, verified with this CA
    broker_client_cert = ""                   # present this certificate to the broker (mTLS)
    broker_client_key = ""                    # ... and its private key (mode 0600)

    [tls]                                     # serve agents over TLS
    cert = ""                                 # PEM certificate chain
    key = ""                                  # its private key (mode 0600)
    client_ca = ""                            # require agent certificates from this CA (mTLS)

    [shutdown]
    grace_seconds = 30.0                      # on SIGTERM: how long running jobs may finish

    [metrics]
    listen = "127.0.0.1:9465"                 # GET /metrics; "" turns it off

    [log]
    format = "text"                           # or "json"
    level = "info"

    [prices]                                  # integer micro-credits (docs/pricing.md)
    gpu_second_price = 1000                   # metered time, billed per GPU-millisecond
    input_tokens_1k_price = 200               # per-inference: per 1,000 tokens in
    output_tokens_1k_price = 600              # ... and out
    call_price = 50                           # ... and per call
    reserved_hour_price = 2_880_000           # a lease of the whole worker, per hour (0: none)
    unused_reserved_bps = 5_000               # leased time no job used costs this share

    [checkpoints]                             # extra models: name = checkpoint file
    # my-lm = "/models/my-lm.pt"

Every key, its variable, flag and default: `WorkerConfig` below, and the table in
docs/operations.md generated from it (`worker config show` prints what is in effect).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import targets, tls
from common.errors import BrokerError
from common.money import SHEET_FIELDS, check_price_sheet
from common.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    Schema,
    SettingsError,
    grpc_listen,
    host_port_or_empty,
    not_empty,
    setting,
    tls_problems,
)

# A lease costs 80% of metered time (2.88M/h = 800/s), and unused leased time half that.
DEFAULT_PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 200,
                  "output_tokens_1k_price": 600, "call_price": 50,
                  "reserved_hour_price": 2_880_000, "unused_reserved_bps": 5_000}

def _check_prices(prices: dict[str, int]) -> str | None:
    bad = sorted(k for k, v in prices.items() if k not in SHEET_FIELDS or v < 0)
    if bad:
        return f"prices must be non-negative integers named {', '.join(SHEET_FIELDS)}: {bad}"
    try:  # the bounds: a price at most 4.6e12, unused_reserved_bps at most 10000
        check_price_sheet(prices, "prices")
    except BrokerError as error:
        return error.message
    return None


@dataclass(frozen=True)
class WorkerConfig:
    broker: str = setting("127.0.0.1:50051", "The broker's gRPC address; several brokers "
                          "on one database comma-separated (it fails over between them).",
                          check=targets.check)
    broker_order: str = setting(targets.SPREAD, "With several brokers: `spread` connects to "
                                "one picked at random (workers share the brokers), `listed` "
                                "to the first that answers (a preferred broker first).",
                                choices=targets.BROKER_ORDERS)
    listen: str = setting("127.0.0.1:50052", "Address agents' Execute calls are served on.",
                          check=grpc_listen)
    advertise: str = setting("", "Endpoint announced to agents in the offers; empty: "
                                 "`listen`.")
    api_key_file: str = setting("var/worker/api-key", "File holding the worker's broker API "
                                "key (role worker).", path=True)
    api_key: str = setting("", "The API key itself, instead of `api_key_file` (e.g. from a "
                           "secret store through WORKER_API_KEY).", secret=True)
    state_dir: str = setting("var/worker", "Usage-signing key, worker id and result cache.",
                             path=True, check=not_empty)
    report_every_tokens: int = setting(64, "Report usage at least every this many tokens, "
                                       "besides the broker's interval.", minimum=1)
    batched_metering: bool = setting(True, "Meter all jobs on one MeterWorker stream, one "
                                     "batch per tick; false: a Meter stream per job (also "
                                     "the fallback when the broker lacks MeterWorker).")
    max_concurrent_jobs: int = setting(1, "Jobs run at once; one more is refused with "
                                       "WORKER_BUSY.", minimum=1)
    shutdown_grace_seconds: float = setting(
        30.0, "On SIGTERM, how long running jobs get to finish; then they are cancelled and "
        "settle what they measured.", key="shutdown.grace_seconds", minimum=0)
    tls_cert: str = setting("", "PEM certificate chain of the agent-facing server; with "
                            "`tls.key` turns TLS on.", key="tls.cert", path=True)
    tls_key: str = setting("", "PEM private key file of `tls.cert` (mode 0600).",
                           key="tls.key", path=True)
    tls_client_ca: str = setting("", "PEM CA bundle; when set, agents must present a "
                                 "certificate it signed (mTLS).", key="tls.client_ca",
                                 path=True)
    broker_ca: str = setting("", "PEM CA bundle to verify the broker with; turns TLS on for "
                             "the link to the broker.", path=True)
    broker_client_cert: str = setting("", "PEM certificate the worker presents to a broker "
                                      "that requires mTLS.", path=True)
    broker_client_key: str = setting("", "PEM private key file of `broker_client_cert` "
                                     "(mode 0600).", path=True)
    metrics_listen: str = setting("127.0.0.1:9465", "Address of the Prometheus endpoint "
                                  "(GET /metrics); empty turns it off.", key="metrics.listen",
                                  check=host_port_or_empty)
    log_format: str = setting("text", "Log format on stderr: `text` or `json` (one object "
                              "per line).", key="log.format", choices=LOG_FORMATS)
    log_level: str = setting("info", "Least severe level logged: debug, info, warning, "
                             "error.", key="log.level", choices=LOG_LEVELS)
    prices: dict[str, int] = setting(dict(DEFAULT_PRICES), "Price sheet in micro-credits "
                                     "(`[prices]` table; keys left out keep their default).",
                                     file_only=True, check=_check_prices)
    checkpoints: dict[str, str] = setting({}, "Extra models: `name = \"checkpoint file\"` "
                                          "(`[checkpoints]` table).", file_only=True)
    handler_modules: list[str] = setting(["worker.runtime.example_handlers"], "Modules whose "
                                         "handlers `handler` jobs may call (comma-separated "
                                         "in the variable and the flag).")

    @property
    def endpoint(self) -> str:
        return self.advertise or self.listen

    def read_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        path = Path(self.api_key_file)
        if not path.exists():
            raise SettingsError(f"API key file {path} not found (a key with role worker)")
        return path.read_text().strip()

    def server_tls(self) -> tls.ServerTls | None:
        """TLS for the agent-facing server (None: plaintext); raises tls.TlsError."""
        return tls.load_server(self.tls_cert, self.tls_key, self.tls_client_ca)

    def broker_tls(self) -> tls.ClientTls | None:
        """TLS for the link to the broker (None: plaintext); raises tls.TlsError."""
        return tls.load_client(self.broker_ca, self.broker_client_cert,
                               self.broker_client_key)


def _cross_check(c: WorkerConfig) -> list[str]:
    problems = tls_problems(c.tls_cert, c.tls_key, c.tls_client_ca)
    if bool(c.broker_client_cert) != bool(c.broker_client_key):
        problems.append("broker_client_cert and broker_client_key must be set together")
    return problems


SCHEMA = Schema(WorkerConfig, "WORKER_", _cross_check)
