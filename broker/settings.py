"""The broker's settings (the machinery, shared with the worker, is common/settings.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    Schema,
    grpc_listen,
    host_port_or_empty,
    not_empty,
    setting,
    tls_problems,
)

from .core.config import CoreConfig
from .store import dsn


@dataclass(frozen=True)
class Settings:
    listen: str = setting(
        "127.0.0.1:50051", "Address the gRPC server listens on (host:port or unix:PATH).",
        check=grpc_listen)
    processes: int = setting(
        1, "Server processes sharing the port (SO_REUSEPORT) and the ledger; see "
        "docs/performance.md (prefork).", minimum=1, maximum=64)
    data_dir: str = setting(
        "var", "Data directory: LMDB ledger, voucher signing keys (created by `broker init`).",
        path=True, check=not_empty)
    store_url: str = setting(
        "", "Where the ledger lives: empty for LMDB in the data directory, or a "
        "postgresql:// URL shared by several brokers (docs/scale-out.md); the data "
        "directory then holds only the signing keys. A password in it is shown as ***.",
        key="store.url", flag="--store", check=dsn.check, shown=dsn.masked)
    fee_bps: int = setting(
        CoreConfig.fee_bps, "Platform fee in basis points of each charge (rounded down; the "
        "worker gets the rest).", minimum=0, maximum=10_000)
    report_interval_ms: int = setting(
        CoreConfig.report_interval_ms, "How often workers report usage; STOP is decided one "
        "interval ahead.", minimum=10)
    default_ttl_ms: int = setting(
        CoreConfig.default_ttl_ms, "Life of an authorization (its hold) when the request "
        "leaves ttl_seconds at 0.", minimum=1000)
    max_ttl_ms: int = setting(
        CoreConfig.max_ttl_ms, "Longest life an authorization may ask for.", minimum=1000)
    worker_lease_ms: int = setting(
        CoreConfig.worker_lease_ms, "A worker drops out of the offers this long after its "
        "last heartbeat.", minimum=1000)
    max_wallet_cap: int = setting(
        CoreConfig.max_wallet_cap, "Largest cap a wallet may have, in micro-credits.",
        minimum=1, maximum=2**63 - 1)
    receipt_period_ms: int = setting(
        CoreConfig.receipt_period_ms, "Receipts record only the hour (3600000) or day "
        "(86400000) they settled in; statements are never finer (docs/privacy.md).",
        check=lambda ms: None if ms in (3_600_000, 86_400_000)
        else "must be 3600000 (an hour) or 86400000 (a day)")
    sweep_interval_ms: int = setting(
        500, "How often holds that timed out are resolved and expired idempotency records "
        "pruned.", minimum=10)
    watch_poll_ms: int = setting(
        1000, "How often a watch stream (WatchAuthorization, WatchAlerts) reads the ledger "
        "again when no change woke it. Changes committed through this broker wake it at "
        "once, and on PostgreSQL so do those committed through any other broker on the "
        "database (LISTEN/NOTIFY): this poll is the fallback.", minimum=50)
    metrics_listen: str = setting(
        "127.0.0.1:9464", "Address of the Prometheus endpoint (GET /metrics); empty turns it "
        "off.", key="metrics.listen", check=host_port_or_empty)
    log_format: str = setting(
        "text", "Log format on stderr: `text` (for people) or `json` (one object per line).",
        key="log.format", choices=LOG_FORMATS)
    log_level: str = setting(
        "info", "Least severe level logged: debug, info (one line per RPC), warning, error.",
        key="log.level", choices=LOG_LEVELS)
    tls_cert: str = setting(
        "", "PEM certificate chain of the gRPC server; with `tls.key` turns TLS on.",
        key="tls.cert", path=True)
    tls_key: str = setting(
        "", "PEM private key file of `tls.cert` (keep it mode 0600).", key="tls.key",
        path=True)
    tls_client_ca: str = setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS).",
        key="tls.client_ca", path=True)
    shutdown_grace_seconds: float = setting(
        10.0, "On SIGTERM, how long running calls and metering sessions get to finish.",
        key="shutdown.grace_seconds", minimum=0)
    meter_first_message_ms: int = setting(
        10_000, "A metering stream must send open or resume this soon after it starts "
        "(FIRST_MESSAGE_TIMEOUT otherwise).", key="limits.meter_first_message_ms",
        minimum=100)
    meter_key_streams: int = setting(
        1_000, "Most metering streams one worker key may have open at once "
        "(TOO_MANY_STREAMS beyond).", key="limits.meter_key_streams", minimum=1)
    meter_streams_total: int = setting(
        10_000, "Most metering streams open at once in all, per server process.",
        key="limits.meter_streams_total", minimum=1)
    auth_failures_per_minute: int = setting(
        60, "Failed authentications (unknown or revoked keys) one peer address may make per "
        "minute once its burst is used up (AUTH_THROTTLED beyond).",
        key="limits.auth_failures_per_minute", minimum=1)
    auth_failure_burst: int = setting(
        30, "Failed authentications one peer address may make in a burst.",
        key="limits.auth_failure_burst", minimum=1)
    audit_interval_seconds: float = setting(
        300.0, "How often the daemon audits every ledger invariant and the journal's hash "
        "chain (problems are logged and raised as an AUDIT_FAILED alert); 0 turns it off.",
        key="audit.interval_seconds", minimum=0)

    def core_config(self) -> CoreConfig:
        return CoreConfig(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(CoreConfig)})


def _broker_cross_check(s: Settings) -> list[str]:
    problems = []
    if s.default_ttl_ms > s.max_ttl_ms:
        problems.append(f"default_ttl_ms ({s.default_ttl_ms}) must not exceed max_ttl_ms "
                        f"({s.max_ttl_ms})")
    problems += tls_problems(s.tls_cert, s.tls_key, s.tls_client_ca)
    return problems


SCHEMA = Schema(Settings, "BROKER_", _broker_cross_check)
