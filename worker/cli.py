"""`worker` command line. The full worker daemon (`worker serve`) is its own issue;
today it verifies vouchers offline against a broker's published keys."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from broker.core.errors import BrokerError

from .voucher_check import VoucherVerifier, grpc_key_fetcher


def cmd_verify(args) -> int:
    with grpc.insecure_channel(args.broker) as channel:
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
    p = sub.add_parser("verify-voucher", help="verify a voucher offline and print its claims")
    p.add_argument("--broker", default="127.0.0.1:50051")
    p.add_argument("voucher", help="the voucher token, or - to read it from stdin")
    p.set_defaults(func=cmd_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
