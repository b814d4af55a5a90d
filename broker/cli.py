"""`broker` command line: init, serve, credentials, audit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .core.config import CoreConfig
from .datadir import AlreadyInitialised, DataDir, init
from .files import write_secret


def _data_dir(args) -> DataDir:
    return DataDir(Path(args.data_dir))


def cmd_init(args) -> int:
    try:
        key_id, admin_key = init(_data_dir(args))
    except AlreadyInitialised as error:
        print(f"broker init: {error}", file=sys.stderr)
        return 1
    print(f"initialised {args.data_dir} (voucher signing key {key_id})")
    if args.admin_key_file:
        write_secret(Path(args.admin_key_file), admin_key.encode() + b"\n")
        print(f"admin API key written to {args.admin_key_file} (mode 0600)")
    else:
        print("admin API key (shown once, store it now):")
        print(admin_key)
    return 0


def cmd_serve(args) -> int:
    from . import demo, tls
    from .daemon import BrokerSettings, PortInUse, serve
    from .store import DataDirLocked

    try:
        server_tls = tls.load_server(args.tls_cert, args.tls_key, args.tls_client_ca)
    except tls.TlsError as error:
        print(f"broker serve: {error}", file=sys.stderr)
        return 2
    settings = BrokerSettings(listen=args.listen, tls=server_tls,
                              shutdown_grace_s=args.shutdown_grace_seconds)
    data_dir = _data_dir(args)
    config = CoreConfig(fee_bps=args.fee_bps)
    admin_key = ""
    if not data_dir.is_initialised():
        if not args.demo:
            print(f"broker serve: {data_dir.root} is not initialised; run `broker init` first",
                  file=sys.stderr)
            return 1
        _, admin_key = init(data_dir)

    def on_ready(broker) -> None:
        if args.demo and demo.bootstrap(broker.services.store, data_dir, config, admin_key):
            print(f"demo owner, wallet and keys written to {data_dir.demo_credentials}")
        if args.demo:
            print_demo_help(data_dir, args.listen)
        sys.stdout.flush()

    try:
        asyncio.run(serve(data_dir, config, settings, on_ready))
    except DataDirLocked as error:
        print(f"broker serve: {error}", file=sys.stderr)
        return 2
    except PortInUse as error:
        print(f"broker serve: {error}; is another broker running?", file=sys.stderr)
        return 2
    return 0


def print_demo_help(data_dir: DataDir, listen: str) -> None:
    key = f"$(.venv/bin/broker credentials --data-dir {data_dir.root} agent)"
    print(f"""
broker ready on {listen}. Try:
  .venv/bin/grpcurl -plaintext {listen} list
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer {key}" \\
      {listen} broker.v1.WalletService/GetBalance
  .venv/bin/grpcurl -plaintext -H "authorization: Bearer {key}" \\
      -d '{{"amount": "250000", "ttl_seconds": 300}}' \\
      {listen} broker.v1.AuthorizationService/Authorize
""")


def cmd_credentials(args) -> int:
    from .demo import load_credentials

    data_dir = _data_dir(args)
    if not data_dir.demo_credentials.exists():
        print(f"no demo credentials in {data_dir.root}; start `make run` first", file=sys.stderr)
        return 1
    credentials = load_credentials(data_dir)
    print(credentials.get(f"{args.role}_api_key") or credentials[args.role])
    return 0


def cmd_audit(args) -> int:
    from .core import audit
    from .store import DataDirLocked

    try:
        store = _data_dir(args).open_store()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a data directory, signing key and admin key")
    p.add_argument("--data-dir", default="var")
    p.add_argument("--admin-key-file", help="write the admin key here (mode 0600)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the broker")
    p.add_argument("--data-dir", default="var")
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--fee-bps", type=int, default=CoreConfig.fee_bps,
                   help="platform fee in basis points of each charge")
    p.add_argument("--demo", action="store_true",
                   help="initialise if needed and create demo owner, wallet and keys")
    p.add_argument("--tls-cert", help="serve over TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", help="the certificate's PEM private key (mode 0600)")
    p.add_argument("--tls-client-ca", help="require client certificates signed by this PEM "
                   "CA (mutual TLS)")
    p.add_argument("--shutdown-grace-seconds", type=float, default=10.0,
                   help="on SIGTERM/SIGINT, how long open metering sessions get to finish")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("credentials", help="print a demo credential (for grpcurl)")
    p.add_argument("--data-dir", default="var")
    p.add_argument("role", choices=["admin", "owner", "agent", "worker", "owner_id",
                                    "wallet_id", "provider_id"])
    p.set_defaults(func=cmd_credentials)

    p = sub.add_parser("audit", help="check every ledger invariant of a stopped broker's data")
    p.add_argument("--data-dir", default="var")
    p.set_defaults(func=cmd_audit)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
