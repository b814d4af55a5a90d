"""Settings of `broker console`: defaults < TOML file < BROKER_CONSOLE_* < flags
(the same machinery as the broker's, broker/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from common import targets
from common.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    Schema,
    host_port,
    setting,
    tls_problems,
)


@dataclass(frozen=True)
class ConsoleSettings:
    listen: str = setting(
        "127.0.0.1:8080", "Address the web console listens on (host:port); keep it on "
        "loopback unless TLS is on.", check=host_port)
    broker: str = setting("127.0.0.1:50051", "The broker's gRPC address; several brokers "
                          "on one database comma-separated (it fails over between them).",
                          check=targets.check)
    broker_order: str = setting(
        targets.SPREAD, "With several brokers: `spread` connects to one picked at random, "
        "`listed` to the first that answers (a preferred broker first).",
        choices=targets.BROKER_ORDERS)
    broker_ca: str = setting(
        "", "PEM CA bundle to verify the broker with; turns TLS on for the link to the "
        "broker.", path=True)
    broker_client_cert: str = setting(
        "", "PEM certificate the console presents to a broker that requires mTLS.", path=True)
    broker_client_key: str = setting(
        "", "PEM private key file of `broker_client_cert` (mode 0600).", path=True)
    tls_cert: str = setting(
        "", "PEM certificate chain of the console's HTTPS server; with `tls.key` turns "
        "HTTPS on (and the session cookie gets Secure).", key="tls.cert", path=True)
    tls_key: str = setting(
        "", "PEM private key file of `tls.cert` (keep it mode 0600).", key="tls.key",
        path=True)
    tls_client_ca: str = setting(
        "", "PEM CA bundle; when set, browsers must present a certificate it signed (mTLS).",
        key="tls.client_ca", path=True)
    session_idle_seconds: int = setting(
        900, "A session unused this long ends; the page asks for the key again.",
        key="session.idle_seconds", minimum=30, maximum=86_400)
    session_max_seconds: int = setting(
        43_200, "A session ends this long after sign-in, used or not.",
        key="session.max_seconds", minimum=60, maximum=604_800)
    log_format: str = setting(
        "text", "Log format on stderr: `text` or `json` (one object per line).",
        key="log.format", choices=LOG_FORMATS)
    log_level: str = setting(
        "info", "Least severe level logged: debug, info (one line per request), warning, "
        "error.", key="log.level", choices=LOG_LEVELS)


def _cross_check(s: ConsoleSettings) -> list[str]:
    problems = tls_problems(s.tls_cert, s.tls_key, s.tls_client_ca)
    if bool(s.broker_client_cert) != bool(s.broker_client_key):
        problems.append("broker_client_cert and broker_client_key must be set together")
    return problems


SCHEMA = Schema(ConsoleSettings, "BROKER_CONSOLE_", _cross_check)
