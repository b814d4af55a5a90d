"""`broker` command line: init, serve, credentials, audit, config show.

Settings come from defaults < `--config FILE` (TOML) < BROKER_* variables < flags;
broker/settings.py declares them and docs/operations.md lists them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from . import logs
from .datadir import AlreadyInitialised, DataDir, init
from .files import write_secret
from .settings import SCHEMA, Effective, Settings, SettingsError

log = logging.getLogger("broker")


def _data_dir(settings: Settings) -> DataDir:
    return DataDir(Path(settings.data_dir))


def announce(settings: Settings, text: str) -> None:
    """Tell the person at the terminal; in JSON mode, one log line like everything else."""
    if settings.log_format == "json":
        log.info(text.strip())
    else:
        print(text, flush=True)


def cmd_init(args, effective: Effective[Settings]) -> int:
    settings = effective.settings
    try:
        key_id, admin_key = init(_data_dir(settings))
    except AlreadyInitialised as error:
        print(f"broker init: {error}", file=sys.stderr)
        return 1
    print(f"initialised {settings.data_dir} (voucher signing key {key_id})")
    if args.admin_key_file:
        write_secret(Path(args.admin_key_file), admin_key.encode() + b"\n")
        print(f"admin API key written to {args.admin_key_file} (mode 0600)")
    else:
        print("admin API key (shown once, store it now):")
        print(admin_key)
    return 0


def daemon_settings(settings: Settings, server_tls=None):
    """What `serve` hands to the daemon (`server_tls`: broker.tls.load_server's)."""
    from .daemon import BrokerSettings

    return BrokerSettings(listen=settings.listen,
                          shutdown_grace_s=settings.shutdown_grace_seconds,
                          sweep_interval_s=settings.sweep_interval_ms / 1000,
                          metrics_listen=settings.metrics_listen,
                          audit_interval_s=settings.audit_interval_seconds, tls=server_tls)


def cmd_serve(args, effective: Effective[Settings]) -> int:
    from . import demo, tls
    from .daemon import PortInUse, serve
    from .metrics import MetricsListenError
    from .store import DataDirLocked

    settings = effective.settings
    try:
        server_tls = tls.load_server(settings.tls_cert, settings.tls_key,
                                     settings.tls_client_ca)
    except tls.TlsError as error:
        log.error("%s", error)
        return 2
    data_dir = _data_dir(settings)
    config = settings.core_config()
    admin_key = ""
    if not data_dir.is_initialised():
        if not args.demo:
            log.error("%s is not initialised; run `broker init` first", data_dir.root)
            return 1
        _, admin_key = init(data_dir)

    def on_ready(broker) -> None:
        if args.demo and demo.bootstrap(broker.services.store, data_dir, config, admin_key):
            announce(settings, f"demo owner, wallet and keys written to "
                               f"{data_dir.demo_credentials}")
        if args.demo:
            announce(settings, demo_help(data_dir, settings.listen))

    try:
        asyncio.run(serve(data_dir, config, daemon_settings(settings, server_tls), on_ready))
    except (DataDirLocked, MetricsListenError) as error:
        log.error("%s", error)
        return 2
    except PortInUse as error:
        log.error("%s; is another broker running?", error)
        return 2
    return 0


def demo_help(data_dir: DataDir, listen: str) -> str:
    key = f"$(.venv/bin/broker credentials --data-dir {data_dir.root} agent)"
    return f"""
broker ready on {listen}. Try:
  .venv/bin/grpcurl -plaintext {listen} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer {key}" \\
      {listen} broker.v1.WalletService/GetBalance
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer {key}" \\
      -d '{{"amount": "250000", "ttl_seconds": 300}}' \\
      {listen} broker.v1.AuthorizationService/Authorize
"""


def cmd_credentials(args, effective: Effective[Settings]) -> int:
    from .demo import load_credentials

    data_dir = _data_dir(effective.settings)
    if not data_dir.demo_credentials.exists():
        print(f"no demo credentials in {data_dir.root}; start `make run` first", file=sys.stderr)
        return 1
    credentials = load_credentials(data_dir)
    print(credentials.get(f"{args.role}_api_key") or credentials[args.role])
    return 0


def cmd_audit(args, effective: Effective[Settings]) -> int:
    from .core import audit
    from .store import DataDirLocked

    try:
        store = _data_dir(effective.settings).open_store()
    except DataDirLocked as error:
        print(f"broker audit: {error}; use the GetLedgerSummary RPC on a running broker",
              file=sys.stderr)
        return 2
    try:
        problems = store.read(audit.check)
    finally:
        store.close()
    for problem in problems:
        print(problem)
    print("ledger OK" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def cmd_config_show(args, effective: Effective[Settings]) -> int:
    print(SCHEMA.show(effective), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    logging_flags = ("log_format", "log_level")

    p = sub.add_parser("init", help="create a data directory, signing key and admin key")
    SCHEMA.add_flags(p, "data_dir", *logging_flags)
    p.add_argument("--admin-key-file", help="write the admin key here (mode 0600)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the broker")
    SCHEMA.add_flags(p)
    p.add_argument("--demo", action="store_true",
                   help="initialise if needed and create demo owner, wallet and keys")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("credentials", help="print a demo credential (for grpcurl)")
    SCHEMA.add_flags(p, "data_dir")
    p.add_argument("role", choices=["admin", "owner", "agent", "worker", "owner_id",
                                    "wallet_id", "provider_id"])
    p.set_defaults(func=cmd_credentials)

    p = sub.add_parser("audit", help="check every ledger invariant of a stopped broker's data")
    SCHEMA.add_flags(p, "data_dir", *logging_flags)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("config", help="inspect the settings")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser("show", help="print the effective settings as TOML, each with "
                                           "its source; secrets masked")
    SCHEMA.add_flags(p)
    p.set_defaults(func=cmd_config_show)

    args = parser.parse_args(argv)
    try:
        effective = SCHEMA.load_args(args, os.environ)
    except SettingsError as error:
        print(f"broker {args.command}: {error}", file=sys.stderr)
        return 2
    logs.configure(effective.settings.log_format, effective.settings.log_level)
    for warning in effective.warnings:
        log.warning("%s", warning)
    return args.func(args, effective)


if __name__ == "__main__":
    sys.exit(main())
