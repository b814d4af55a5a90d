"""`worker` command line: `worker serve` runs the worker daemon; `worker
verify-voucher` checks a voucher offline against a broker's published keys."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import grpc

from broker import tls
from broker.core.errors import BrokerError

from .voucher_check import VoucherVerifier, grpc_key_fetcher


def cmd_serve(args) -> int:
    from . import config as worker_config
    from .daemon import ListenError, serve

    try:
        config = worker_config.load(args.config, {
            "broker": args.broker, "listen": args.listen, "api_key_file": args.api_key_file,
            "state_dir": args.state_dir, "advertise": args.advertise,
            "drain_timeout_s": args.shutdown_grace_seconds, "tls_cert": args.tls_cert,
            "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
            **_broker_tls_options(args)})
        config.api_key()
        # Refuse bad TLS files before loading any model.
        config.server_tls()
        config.broker_tls()
    except (worker_config.ConfigError, tls.TlsError) as error:
        print(f"worker serve: {error}", file=sys.stderr)
        return 2

    def ready(worker_id: str, port: int) -> None:
        print(f"worker {worker_id} ready on {config.listen}, registered with {config.broker}",
              flush=True)

    try:
        asyncio.run(serve(config, ready))
    except ListenError as error:
        print(f"worker serve: {error}; is another worker running?", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as error:
        print(f"worker serve: the broker refused registration: {error.code().name} "
              f"{error.details()}", file=sys.stderr)
        return 2
    return 0


def cmd_verify(args) -> int:
    try:
        broker_tls = tls.load_client(args.broker_ca, args.broker_client_cert,
                                     args.broker_client_key)
    except tls.TlsError as error:
        print(f"worker verify-voucher: {error}", file=sys.stderr)
        return 2
    with tls.channel(args.broker, broker_tls) as channel:
        verifier = VoucherVerifier(grpc_key_fetcher(channel))
        token = sys.stdin.readline().strip() if args.voucher == "-" else args.voucher
        try:
            claims = verifier.verify(token)
        except BrokerError as error:
            print(f"voucher rejected: {error.reason}: {error.message}", file=sys.stderr)
            return 1
    print(json.dumps({**claims.to_json(), "key_id": claims.key_id}, indent=2))
    return 0


def _broker_tls_options(args) -> dict:
    return {"broker_ca": args.broker_ca, "broker_client_cert": args.broker_client_cert,
            "broker_client_key": args.broker_client_key}


def _add_broker_tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-ca", help="reach the broker over TLS, verified with this PEM CA")
    p.add_argument("--broker-client-cert", help="present this PEM certificate to the broker "
                   "(mutual TLS)")
    p.add_argument("--broker-client-key", help="the client certificate's PEM private key "
                   "(mode 0600)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worker", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the worker daemon")
    p.add_argument("--config", help="TOML config file (see worker/config.py)")
    p.add_argument("--broker", help="broker address, default 127.0.0.1:50051")
    p.add_argument("--listen", help="address to serve agents on, default 127.0.0.1:50052")
    p.add_argument("--advertise", help="endpoint to announce to agents, default --listen")
    p.add_argument("--api-key-file", help="file holding the worker's broker API key")
    p.add_argument("--state-dir", help="usage key, worker id and result cache; default var/worker")
    p.add_argument("--shutdown-grace-seconds", type=float, help="on SIGTERM/SIGINT, how long "
                   "running jobs get to finish; default 30")
    p.add_argument("--tls-cert", help="serve agents over TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", help="the certificate's PEM private key (mode 0600)")
    p.add_argument("--tls-client-ca", help="require agent certificates signed by this PEM CA "
                   "(mutual TLS)")
    _add_broker_tls_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("verify-voucher", help="verify a voucher offline and print its claims")
    p.add_argument("--broker", default="127.0.0.1:50051")
    _add_broker_tls_flags(p)
    p.add_argument("voucher", help="the voucher token, or - to read it from stdin")
    p.set_defaults(func=cmd_verify)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
