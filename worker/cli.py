"""`worker` command line: `worker serve` runs the worker daemon; `worker
verify-voucher` checks a voucher offline against a broker's published keys; `worker
config show` prints the effective settings (defaults < --config FILE < WORKER_* < flags)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import grpc

from common import tls
from common.errors import BrokerError
from common.settings import Effective, SettingsError

from .config import SCHEMA, WorkerConfig
from .voucher_check import VoucherVerifier, grpc_key_fetcher

log = logging.getLogger("worker")


def cmd_serve(args, effective: Effective[WorkerConfig]) -> int:
    try:
        from .daemon import ListenError, serve
    except ModuleNotFoundError as error:  # the light install (`pip install .`)
        log.error("worker serve needs %s: pip install 'compute-broker[worker]'", error.name)
        return 2

    config = effective.settings
    try:
        config.read_api_key()
        # Bad TLS files stop the worker before it loads any model.
        config.server_tls()
        config.broker_tls()
    except (SettingsError, tls.TlsError) as error:
        log.error("%s", error)
        return 2

    try:
        return asyncio.run(serve(config))
    except ListenError as error:
        log.error("%s; is another worker running?", error)
        return 2
    except grpc.aio.AioRpcError as error:
        log.error("the broker refused registration: %s %s", error.code().name,
                  error.details())
        return 2


def cmd_verify(args, effective: Effective[WorkerConfig]) -> int:
    try:
        broker_tls = effective.settings.broker_tls()
    except tls.TlsError as error:
        log.error("%s", error)
        return 2
    with tls.broker_channel(effective.settings.broker, broker_tls,
                            order=effective.settings.broker_order) as channel:
        verifier = VoucherVerifier(grpc_key_fetcher(channel))
        token = sys.stdin.readline().strip() if args.voucher == "-" else args.voucher
        try:
            claims = verifier.verify(token)
        except BrokerError as error:
            print(f"voucher rejected: {error.reason}: {error.message}", file=sys.stderr)
            return 1
    print(json.dumps({**claims.to_json(), "key_id": claims.key_id}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the worker daemon")
    SCHEMA.add_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("verify-voucher", help="verify a voucher offline and print its claims")
    SCHEMA.add_flags(p, "broker", "broker_order", "broker_ca", "broker_client_cert",
                     "broker_client_key", "log_format", "log_level")
    p.add_argument("voucher", help="the voucher token, or - to read it from stdin")
    p.set_defaults(func=cmd_verify)

    SCHEMA.add_config_show(sub)

    return SCHEMA.run(parser, argv, log)


if __name__ == "__main__":
    sys.exit(main())
