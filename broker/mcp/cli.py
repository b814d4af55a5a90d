"""`broker-mcp`: the broker's MCP server for one agent (stdio or streamable HTTP).

    broker-mcp --broker 127.0.0.1:50051 --api-key-file agent-key
    BROKER_MCP_API_KEY=... broker-mcp --transport streamable-http --port 8765

The agent's API key comes from a file or the environment, never from a flag: flags are
visible to every user of the machine in `ps`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common import targets

KEY_ENV = "BROKER_MCP_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="broker-mcp",
        description="MCP server that lets an LLM agent buy GPU compute from the broker with "
        "its agent API key: find offers, run jobs within a maximum spend, spend status, "
        "receipts, approvals.",
        epilog=f"The API key: --api-key-file FILE, or the environment variable {KEY_ENV}.")
    parser.add_argument("--broker", default=os.environ.get("BROKER_MCP_BROKER",
                                                           "127.0.0.1:50051"),
                        help="the broker's gRPC address; several brokers on one database "
                        "comma-separated (env BROKER_MCP_BROKER; default %(default)s)")
    parser.add_argument("--broker-order",
                        default=os.environ.get("BROKER_MCP_BROKER_ORDER", targets.SPREAD),
                        help="with several brokers: spread (one picked at random) or listed "
                        "(the first that answers) (env BROKER_MCP_BROKER_ORDER; default "
                        "%(default)s)")
    parser.add_argument("--api-key-file", type=Path,
                        default=os.environ.get("BROKER_MCP_API_KEY_FILE") or None,
                        help="file holding the agent's API key (env BROKER_MCP_API_KEY_FILE)")
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio",
                        help="stdio (the host starts this process) or streamable-http "
                        "(default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="streamable-http: address to listen on (default %(default)s; "
                        "whoever reaches it spends this agent's money)")
    parser.add_argument("--port", type=int, default=8765,
                        help="streamable-http: port (default %(default)s)")
    parser.add_argument("--job-timeout", type=float, default=300.0,
                        help="seconds a job may run (default %(default)s)")
    parser.add_argument("--ca", help="PEM CA of a broker on TLS")
    parser.add_argument("--tls", action="store_true",
                        help="broker on TLS, trusting the system's roots")
    parser.add_argument("--client-cert", help="mutual TLS: this client's PEM certificate")
    parser.add_argument("--client-key", help="mutual TLS: its private key (a file)")
    args = parser.parse_args(argv)
    try:  # checked here, not with `choices`, so that a bad BROKER_MCP_BROKER_ORDER is caught
        targets.check_order(args.broker_order)
    except targets.TargetError as error:
        print(f"broker-mcp: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args


def read_api_key(key_file: Path | None) -> str:
    """The key from the file, else the environment; SystemExit with a clear message."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as error:
            raise SystemExit(f"broker-mcp: cannot read the API key file {key_file}: "
                             f"{error.strerror}") from None
        if not key:
            raise SystemExit(f"broker-mcp: the API key file {key_file} is empty")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise SystemExit(f"broker-mcp: no API key: pass --api-key-file FILE or set {KEY_ENV}")
    return key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key = read_api_key(args.api_key_file)
    # stdout is the MCP channel on stdio: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    from ..client import BrokerClient
    from .server import build_server

    client = BrokerClient(args.broker, key, ca=args.ca, tls=args.tls,
                          client_cert=args.client_cert, client_key=args.client_key,
                          broker_order=args.broker_order)
    server = build_server(client, job_timeout=args.job_timeout)
    try:
        if args.transport == "stdio":
            server.run("stdio")
        else:
            server.run("streamable-http", host=args.host, port=args.port)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
