"""Several broker addresses as one gRPC target, so that a channel fails over by itself.

    addresses = "10.0.0.1:50051,10.0.0.2:50051"
    channel = grpc.insecure_channel(targets.grpc_target(addresses),
                                    options=targets.broker_channel_options(addresses))

A comma-separated list becomes an `ipv4:`/`ipv6:` target with every address: gRPC's
default `pick_first` policy connects to the first that answers and, when that
connection breaks, to the next one that does. Calls in flight on the broken connection
fail with UNAVAILABLE; the caller's own retry (or the worker's session resume) then
runs on the broker the channel moved to. Host names are resolved once, here. One
address passes through unchanged (its DNS name stays for TLS and for re-resolution).

The broker order: "spread" (the default) lets each channel shuffle the list once
(pick_first's `shuffleAddressList`, gRFC A62), so that many clients share the brokers
instead of all holding to the first; each channel keeps to the broker it picked and
fails over as above. "listed" keeps the list's order (a preferred broker first).
"""

from __future__ import annotations

import ipaddress
import json
import socket


class TargetError(ValueError):
    pass


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise TargetError(f"broker address {address.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


def _resolve(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise TargetError(f"cannot resolve broker host {host!r}: {error.strerror}") from None
    return ipaddress.ip_address(found[0][4][0])


def check(addresses: str) -> str | None:
    """A settings check: None when `addresses` makes a target, else why not."""
    if not addresses.strip():
        return "must not be empty"
    try:
        grpc_target(addresses)
    except TargetError as error:
        return str(error)
    return None


def grpc_target(addresses: str) -> str:
    """`addresses` (one host:port, or several comma-separated) as a gRPC target."""
    if "," not in addresses:
        return addresses
    resolved = [(_resolve(*hp), hp[1]) for hp in map(_split, addresses.split(","))]
    if all(ip.version == 4 for ip, _ in resolved):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)
    if all(ip.version == 6 for ip, _ in resolved):
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in resolved)
    raise TargetError("broker addresses mix IPv4 and IPv6; list one family only")


# -- noticing a broker that hangs ---------------------------------------------------------
#
# A broker that hangs (SIGSTOP, a frozen VM, a host cut off without a reset) keeps its
# TCP connections open: only an HTTP/2 PING left unanswered tells. Every channel to
# brokers pings every KEEPALIVE_TIME_MS, with or without calls, and drops the
# connection when an answer takes longer than PING_TIMEOUT_MS; the calls on it fail
# with UNAVAILABLE (retried with the same request_id, or the metering session resumed)
# and pick_first connects to the next broker that answers (it tries the next address
# 250 ms into a connection attempt that has not completed, so a hung broker early in
# the list is passed over too). gRPC Python 1.85 times keepalive pings with the
# transport's ping timeout (`grpc.http2.ping_timeout_ms`, 60 s by default) rather than
# `grpc.keepalive_timeout_ms`: both are set. Measured on this machine: a call on
# a SIGSTOPped broker fails after 2-4 s and the retry lands on the next broker.
KEEPALIVE_TIME_MS = 2_000
PING_TIMEOUT_MS = 2_000
BROKER_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # an idle connection to a hung broker too
    ("grpc.http2.max_pings_without_data", 0),  # a quiet stream keeps being pinged
    # No flow-control (BDP) probes: they are pings too, sent as data arrives; the
    # broker's messages are small, the default window serves them.
    ("grpc.http2.bdp_probe", 0),
)
# What a broker's server must allow for those pings (the default, one ping per five
# minutes without data, would answer them with GOAWAY "too_many_pings"). No strikes at
# all: a broker starved of CPU reads several pings at once, each after the first "too
# soon", and struck out healthy clients under load (tests/integration/test_worker.py).
SERVER_PING_POLICY: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
)


# -- which broker of a list a channel uses ----------------------------------------------
SPREAD, LISTED = "spread", "listed"
BROKER_ORDERS = (SPREAD, LISTED)
# gRPC reads this as the channel's default service config (an `ipv4:` target's
# resolver brings none of its own); gRPC Python 1.85 and grpc-js 1.14 honour it
# (tests/integration/test_broker_spread.py).
SPREAD_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}]})


def check_order(order: str) -> str:
    """`order` if it is one of BROKER_ORDERS, else a TargetError in one line."""
    if order not in BROKER_ORDERS:
        raise TargetError(f"broker order {order!r} is not one of {', '.join(BROKER_ORDERS)}")
    return order


def order_options(addresses: str, order: str = SPREAD) -> list[tuple[str, object]]:
    """The channel option that spreads channels over a list of brokers: none for one
    address (nothing to choose) or for the `listed` order."""
    if check_order(order) == LISTED or "," not in addresses:
        return []
    return [("grpc.service_config", SPREAD_SERVICE_CONFIG)]


def broker_channel_options(addresses: str, order: str = SPREAD,
                           options=None) -> list[tuple[str, object]]:
    """BROKER_CHANNEL_OPTIONS and the order's option for `addresses`, with `options` on
    top (a later option wins in gRPC)."""
    return [*BROKER_CHANNEL_OPTIONS, *order_options(addresses, order), *(options or ())]
