"""`broker` command line: init, serve, migrate, console, credentials, audit, config show,
receipts (owner side of sealed receipts), keys rotate, status (an owner's spend at a glance).

Settings come from defaults < `--config FILE` (TOML) < BROKER_* variables < flags;
broker/settings.py declares them and docs/operations.md lists them."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

from common.files import write_secret
from common.settings import Effective

from .console.settings import SCHEMA as CONSOLE_SCHEMA
from .datadir import AlreadyInitialised, DataDir, init
from .settings import SCHEMA, Settings

log = logging.getLogger("broker")


def _data_dir(settings: Settings) -> DataDir:
    return DataDir(Path(settings.data_dir), settings.store_url)


def announce(settings: Settings, text: str) -> None:
    """Tell the person at the terminal; in JSON mode, one log line like everything else."""
    if settings.log_format == "json":
        log.info(text.strip())
    else:
        print(text, flush=True)


def cmd_init(args, effective: Effective[Settings]) -> int:
    from .store.dsn import StoreOpenError

    settings = effective.settings
    data_dir = _data_dir(settings)
    try:
        key_id, admin_key = init(data_dir)
    except AlreadyInitialised as error:
        print(f"broker init: {error}", file=sys.stderr)
        return 1
    except StoreOpenError as error:
        print(f"broker init: {error}", file=sys.stderr)
        return 2
    where = f" (ledger in {data_dir.store_name})" if settings.store_url else ""
    print(f"initialised {settings.data_dir}{where} (voucher signing key {key_id})")
    if args.admin_key_file:
        write_secret(Path(args.admin_key_file), admin_key.encode() + b"\n")
        print(f"admin API key written to {args.admin_key_file} (mode 0600)")
    else:
        print("admin API key (shown once, store it now):")
        print(admin_key)
    return 0


def daemon_settings(settings: Settings, server_tls=None):
    """What `serve` hands to the daemon (`server_tls`: common.tls.load_server's)."""
    from .api.base import Limits
    from .daemon import BrokerSettings

    limits = Limits(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(Limits)})
    return BrokerSettings(listen=settings.listen,
                          shutdown_grace_s=settings.shutdown_grace_seconds,
                          sweep_interval_s=settings.sweep_interval_ms / 1000,
                          watch_poll_s=settings.watch_poll_ms / 1000,
                          metrics_listen=settings.metrics_listen,
                          audit_interval_s=settings.audit_interval_seconds, tls=server_tls,
                          limits=limits)


def cmd_serve(args, effective: Effective[Settings]) -> int:
    from common import tls
    from common.clock import file_offset_clock, offset_clock
    from common.metrics import MetricsListenError

    from . import demo
    from .daemon import PortInUse, serve, serve_processes
    from .store import DataDirLocked
    from .store.dsn import StoreOpenError
    from .store.schema import SchemaError

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
    try:
        if args.demo and (settings.store_url or not data_dir.is_initialised()):
            # A database that another broker initialised already is fine.
            with contextlib.suppress(AlreadyInitialised):
                _, admin_key = init(data_dir)
        elif not data_dir.is_initialised():
            log.error("%s is not initialised; run `broker init` first", data_dir.root)
            return 1
        _require_current_schema(data_dir)
    except (DataDirLocked, SchemaError, StoreOpenError) as error:
        log.error("%s", error)
        return 2

    def on_ready(broker) -> None:
        if not args.demo:
            return
        if demo.bootstrap(broker.services.store, data_dir, config, admin_key):
            announce(settings, f"demo owner, wallet and keys written to "
                               f"{data_dir.demo_credentials}")
        announce(settings, demo_help(data_dir, settings.listen))

    daemon = daemon_settings(settings, server_tls)
    try:
        clock = file_offset_clock(args.clock_offset_file, args.clock_offset_ms) \
            if args.clock_offset_file else offset_clock(args.clock_offset_ms)
        if settings.processes > 1:
            return serve_processes(data_dir, config, daemon, settings.processes, on_ready,
                                   clock)
        return asyncio.run(serve(data_dir, config, daemon, on_ready, clock))
    except (DataDirLocked, MetricsListenError, StoreOpenError) as error:
        log.error("%s", error)
        return 2
    except PortInUse as error:
        log.error("%s; is another broker running?", error)
        return 2


def _require_current_schema(data_dir: DataDir) -> None:
    from .store import schema

    store = data_dir.open_store()
    try:
        store.read(lambda tx: schema.require_current(tx, data_dir.store_name))
    finally:
        store.close()


def cmd_migrate(args, effective: Effective[Settings]) -> int:
    from .store import DataDirLocked, schema
    from .store.dsn import StoreOpenError

    data_dir = _data_dir(effective.settings)
    if not data_dir.store_url and not data_dir.is_initialised():
        print(f"broker migrate: {data_dir.root} is not a broker data directory",
              file=sys.stderr)
        return 1
    try:  # PostgreSQL: brings the table layout up to date first
        store = data_dir.open_store(migrate=True)
    except DataDirLocked as error:
        print(f"broker migrate: {error}; stop it first", file=sys.stderr)
        return 2
    except StoreOpenError as error:
        print(f"broker migrate: {error}", file=sys.stderr)
        return 2
    name = data_dir.store_name
    try:
        found, now = store.submit_sync(lambda tx: schema.migrate(tx, name))
    except schema.SchemaError as error:
        print(f"broker migrate: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{name}: already at schema version {now}" if found == now else
          f"{name}: migrated from schema version {found} to {now}")
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
The whole walkthrough (execute on the worker, receipt, balance) is in README.md,
"Try it with grpcurl"; `make demo` and `make demo-node` run an agent against this broker.
"""


def cmd_credentials(args, effective: Effective[Settings]) -> int:
    from .demo import load_credentials

    data_dir = _data_dir(effective.settings)
    if not data_dir.demo_credentials.exists():
        print(f"broker credentials: {_no_credentials(data_dir, effective)}", file=sys.stderr)
        return 1
    credentials = load_credentials(data_dir)
    print(credentials.get(f"{args.role}_api_key") or credentials[args.role])
    return 0


def _no_credentials(data_dir: DataDir, effective: Effective[Settings]) -> str:
    source = effective.sources["data_dir"]
    return (f"no demo credentials in {data_dir.root} (data directory from {source}); "
            f"start `make run DATA={data_dir.root}` first, or point --data-dir or "
            f"BROKER_DATA_DIR at the DATA that `make run` uses")


def _client(args, api_key: str):
    """A BrokerClient for --broker, with --ca, --client-cert and --client-key (TLS)."""
    from .client import BrokerClient

    return BrokerClient(args.broker, api_key, ca=args.ca, client_cert=args.client_cert,
                        client_key=args.client_key)


def _read_key(path: str, what: str) -> str:
    """An API key from a file; OSError and ValueError say which file and why."""
    try:
        key = Path(path).read_text().strip()
    except OSError as error:
        raise OSError(f"cannot read the {what} file {path}: {error.strerror}") from None
    if not key:
        raise ValueError(f"the {what} file {path} is empty")
    return key


def cmd_audit(args, effective: Effective[Settings]) -> int:
    from .core import audit, mandates
    from .store import DataDirLocked
    from .store.dsn import StoreOpenError

    try:
        store = _data_dir(effective.settings).open_store()
    except StoreOpenError as error:
        print(f"broker audit: {error}", file=sys.stderr)
        return 2
    except DataDirLocked as error:
        print(f"broker audit: {error}; use the GetLedgerSummary RPC on a running broker",
              file=sys.stderr)
        return 2
    try:
        if args.mandates:
            report = store.read(lambda tx: mandates.audit(
                tx, _ms(args.from_time, 0), _ms(args.to_time, 2**62), args.owner))
        else:
            problems = store.read(audit.check)
    finally:
        store.close()
    if args.mandates:
        for what, why in report["uncovered"]:
            print(f"not covered: {what}: {why}")
        n, bad = report["charges"], len(report["uncovered"])
        print(f"{n} charge(s); all covered by a valid mandate" if not bad else
              f"{n} charge(s); {bad} not covered by a valid mandate")
        return 1 if bad else 0
    for problem in problems:
        print(problem)
    print("ledger OK" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def _ms(text: str, default: int) -> int:
    """An RFC 3339 time (or a date, UTC) as epoch milliseconds; `default` when empty."""
    from datetime import UTC, datetime

    if not text:
        return default
    parsed = datetime.fromisoformat(text)
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)


def _signing_key(path: str):
    from nacl.signing import SigningKey

    return SigningKey(bytes.fromhex(Path(path).read_text().strip()))


def _write_new_key(command: str, path: str, private: bytes) -> bool:
    """Write a fresh private key (hex, mode 0600) for `broker <command>`; refuse, with
    one line, to overwrite a key file already there."""
    out = Path(path)
    if out.exists():
        print(f"broker {command}: {out} exists; not overwriting a key", file=sys.stderr)
        return False
    write_secret(out, private.hex().encode() + b"\n")
    return True


def cmd_mandates_keygen(args, effective: Effective[Settings]) -> int:
    """A fresh Ed25519 mandate key: the private key to a 0600 file (it stays with the
    owner), the public key printed for DelegationService.RegisterMandateKey."""
    from nacl.signing import SigningKey

    from common.mandates import key_id

    key = SigningKey.generate()
    if not _write_new_key("mandates keygen", args.out, bytes(key)):
        return 1
    public = bytes(key.verify_key)
    print(f"private key written to {args.out} (mode 0600)")
    print(f"key id: {key_id(public)}")
    print("public key (base64, for RegisterMandateKey): "
          f"{base64.b64encode(public).decode()}")
    return 0


def cmd_mandates_public_key(args, effective: Effective[Settings]) -> int:
    print(base64.b64encode(bytes(_signing_key(args.key).verify_key)).decode())
    return 0


def cmd_mandates_sign(args, effective: Effective[Settings]) -> int:
    """Sign a mandate offline with the owner's mandate key (docs/delegation.md)."""
    from common.clock import now_ms
    from common.errors import BrokerError
    from common.mandates import sign

    now = now_ms()
    try:
        token = sign(_signing_key(args.key), wallet_id=args.wallet, agent_key_id=args.agent,
                     per_job=args.per_job, total=args.total, models=args.model,
                     issued_ms=now, expire_ms=_ms(args.until, now + args.ttl_seconds * 1000))
    except (OSError, ValueError, BrokerError) as error:
        print(f"broker mandates sign: {error}", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_receipts_keygen(args, effective: Effective[Settings]) -> int:
    """A new X25519 key pair for sealed receipts: the private key to a 0600 file, the
    public key printed for RegisterReceiptKey."""
    from nacl.public import PrivateKey

    from common.sealing import receipt_key_id

    key = PrivateKey.generate()
    if not _write_new_key("receipts keygen", args.out, bytes(key)):
        return 1
    public = bytes(key.public_key)
    print(f"private key written to {args.out} (mode 0600); keep it, it alone opens your "
          "receipts")
    print(f"receipt key id: {receipt_key_id(public)}")
    print(f"public key (base64, for StatementService/RegisterReceiptKey): "
          f"{base64.b64encode(public).decode()}")
    return 0


def cmd_receipts_public_key(args, effective: Effective[Settings]) -> int:
    """The base64 public key of a private receipt key file, for RegisterReceiptKey."""
    from common.sealing import SealError, load_private_key

    try:
        key = load_private_key(Path(args.key).read_text())
    except (OSError, ValueError, SealError) as error:
        print(f"broker receipts public-key: {error}", file=sys.stderr)
        return 1
    print(base64.b64encode(bytes(key.public_key)).decode())
    return 0


def _sealed_items(value) -> list:
    """Receipts and statements in grpcurl's (or protobuf's) JSON: a GetReceipt,
    ListReceipts or GetStatement answer, or a bare Receipt or Statement."""
    from google.protobuf import json_format

    from .v1 import resources_pb2, statement_service_pb2

    if isinstance(value, list):
        return [item for v in value for item in _sealed_items(v)]
    if not isinstance(value, dict):
        return []
    if "receipts" in value:
        return _sealed_items(value["receipts"])
    for wrapper in ("receipt", "statement"):
        if wrapper in value:
            return _sealed_items(value[wrapper])
    if "annex" in value:
        kind = statement_service_pb2.Statement()
    elif "sealedItemised" in value or "sealed_itemised" in value:
        kind = resources_pb2.Receipt()
    else:
        return []
    try:
        return [json_format.ParseDict(value, kind, ignore_unknown_fields=True)]
    except json_format.ParseError as error:
        raise ValueError(f"not a receipt or statement: {error}") from None


def cmd_receipts_open(args, effective: Effective[Settings]) -> int:
    """Open sealed receipts (or a statement's annex) on the owner's side."""
    from common import tls
    from common.sealing import SealError, load_private_key

    from .client import BrokerClientError, open_sealed

    try:
        key = load_private_key(Path(args.key).read_text())
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
        if not text.strip():
            raise ValueError("the input is empty (did the call that should produce it fail?)")
        items = _sealed_items(json.loads(text))
    except (OSError, ValueError, SealError) as error:
        print(f"broker receipts open: {error}", file=sys.stderr)
        return 1
    if not items:
        print("broker receipts open: no sealed receipt or statement annex in the input",
              file=sys.stderr)
        return 1
    signing_keys = None
    if args.broker:
        try:
            with _client(args, "") as client:
                signing_keys = client.receipt_signing_keys()
        except (BrokerClientError, tls.TlsError) as error:
            print(f"broker receipts open: cannot fetch the broker's keys: {error}",
                  file=sys.stderr)
            return 2
    try:
        opened = [open_sealed(item, key, signing_keys) for item in items]
    except SealError as error:
        print(f"broker receipts open: {error}", file=sys.stderr)
        return 1
    print(json.dumps(opened[0] if len(opened) == 1 else opened, indent=2, sort_keys=True))
    return 0


def cmd_vouchers_keygen(args, effective: Effective[Settings]) -> int:
    """A fresh Ed25519 holder key: the private key to a 0600 file, the public key printed
    for AuthorizeRequest.holder_public_key."""
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    if not _write_new_key("vouchers keygen", args.out, bytes(key)):
        return 1
    print(f"private key written to {args.out} (mode 0600)")
    print("public key (base64, for AuthorizeRequest.holder_public_key): "
          f"{base64.b64encode(bytes(key.verify_key)).decode()}")
    return 0


def cmd_vouchers_narrow(args, effective: Effective[Settings]) -> int:
    """Derive a narrower voucher offline (no broker): docs/delegation.md."""
    from nacl.signing import SigningKey

    from common.clock import now_ms
    from common.errors import BrokerError
    from common.narrowing import derive, inherit, public_key_text, verify_chain_offline

    def read_key(path: str) -> SigningKey:
        return SigningKey(bytes.fromhex(Path(path).read_text().strip()))

    source = sys.stdin if args.voucher == "-" else open(args.voucher)  # noqa: SIM115
    with source:
        token = source.read().strip()
    try:
        parent = verify_chain_offline(token)
        expire_ms = min(parent.expire_ms, now_ms() + args.ttl_seconds * 1000) \
            if args.ttl_seconds else parent.expire_ms
        scope = inherit(token, {"model": args.model, "resource_class": args.resource_class,
                                "worker_id": args.worker_id,
                                "max_prices": dict(_price(p) for p in args.max_price)})
        next_key = ""
        if args.next_key_out:
            out = Path(args.next_key_out)
            if out.exists():
                print(f"broker vouchers narrow: {out} exists", file=sys.stderr)
                return 1
            fresh = SigningKey.generate()
            write_secret(out, bytes(fresh).hex().encode() + b"\n")
            next_key = public_key_text(fresh)
        derived = derive(token, read_key(args.key), amount=args.amount, expire_ms=expire_ms,
                         scope=scope, next_public_key=next_key)
    except BrokerError as error:  # never echoes the token
        print(f"broker vouchers narrow: {error.reason}: {error.message}", file=sys.stderr)
        return 1
    print(derived)
    return 0


def _price(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    return name, int(value)


def cmd_keys_rotate(args, effective: Effective[Settings]) -> int:
    """Rotate the voucher- or receipt-signing key of a running broker (admin key)."""
    from common import tls

    from .client import BrokerClientError

    try:
        admin_key = _read_key(args.admin_key_file, "admin key")
        with _client(args, admin_key) as client:
            if args.which == "voucher":
                reply = client.rotate_voucher_key()
                retire = reply.previous_retire_time.ToJsonString()
                print(f"voucher key {reply.key.key_id} is active; {reply.previous_key_id} "
                      f"keeps verifying its vouchers until {retire}, then retires")
            else:
                reply = client.rotate_receipt_signing_key()
                print(f"receipt-signing key {reply.key.key_id} is active; "
                      f"{reply.previous_key_id} still verifies what it signed")
    except (OSError, ValueError, BrokerClientError, tls.TlsError) as error:
        print(f"broker keys rotate: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_console(args, effective) -> int:
    """The web console for owners and auditors (broker/console)."""
    from .console.cli import run

    return run(effective.settings)


def cmd_status(args, effective: Effective[Settings]) -> int:
    """Treasury, each wallet's posted, held and spent, and the last receipts."""
    from common import tls

    from . import status
    from .client import BrokerClientError
    from .demo import load_credentials

    try:
        if args.api_key_file:
            key = _read_key(args.api_key_file, "owner key")
        else:
            data_dir = _data_dir(effective.settings)
            if not data_dir.demo_credentials.exists():
                raise ValueError(_no_credentials(data_dir, effective)
                                 + ", or pass --api-key-file")
            key = load_credentials(data_dir)["owner_api_key"]
        with _client(args, key) as client:
            report = status.gather(client, args.receipts)
    except (OSError, ValueError, BrokerClientError, tls.TlsError) as error:
        print(f"broker status: {error}", file=sys.stderr)
        return 1
    width = args.width or shutil.get_terminal_size().columns
    print(status.render(report, width), end="")
    return 0


LOGGING_FLAGS = ("log_format", "log_level")


def _add_client_flags(p: argparse.ArgumentParser, broker_help: str,
                      default: str | None = "127.0.0.1:50051") -> None:
    p.add_argument("--broker", metavar="HOST:PORT", default=default,
                   help=broker_help + (f" (default {default})" if default else ""))
    p.add_argument("--ca", metavar="PATH",
                   help="PEM CA to verify a broker on TLS with (docs/certificates.md)")
    p.add_argument("--client-cert", metavar="PATH",
                   help="PEM client certificate, for a broker that requires mTLS")
    p.add_argument("--client-key", metavar="PATH", help="the private key of --client-cert")


def _add_key_commands(group, keygen_help: str, keygen, public_key=None) -> None:
    """`keygen --out FILE` (and `public-key --key FILE` when `public_key` is given) in a
    command group: the same flags for every kind of owner-held key."""
    p = group.add_parser("keygen", help=keygen_help)
    SCHEMA.add_flags(p, *LOGGING_FLAGS)
    p.add_argument("--out", required=True, help="file for the private key (mode 0600)")
    p.set_defaults(func=keygen)
    if public_key is not None:
        p = group.add_parser("public-key", help="print the base64 public key of a key file")
        SCHEMA.add_flags(p, *LOGGING_FLAGS)
        p.add_argument("--key", required=True, help="the private key file from `keygen`")
        p.set_defaults(func=public_key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a data directory, signing key and admin key "
                                    "(and, with --store, the PostgreSQL tables)")
    SCHEMA.add_flags(p, "data_dir", "store_url", *LOGGING_FLAGS)
    p.add_argument("--admin-key-file", help="write the admin key here (mode 0600)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the broker")
    SCHEMA.add_flags(p)
    p.add_argument("--demo", action="store_true",
                   help="initialise if needed and create demo owner, wallet and keys")
    p.add_argument("--clock-offset-ms", type=int, default=0,
                   help="run the broker's clock this far ahead (tests and drills only)")
    p.add_argument("--clock-offset-file", default="",
                   help="also add the milliseconds written in this file, read at every "
                        "reading of the clock: a wall-clock step while the broker runs "
                        "(tests only)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("credentials", help="print a demo credential (for grpcurl)")
    SCHEMA.add_flags(p, "data_dir")
    p.add_argument("role", choices=["admin", "owner", "agent", "worker", "owner_id",
                                    "wallet_id", "provider_id"])
    p.set_defaults(func=cmd_credentials)

    p = sub.add_parser("migrate", help="bring a data directory written by an older release "
                                       "up to this release's schema (the broker stopped)")
    SCHEMA.add_flags(p, "data_dir", "store_url", *LOGGING_FLAGS)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("audit", help="check every ledger invariant of a stopped broker's data")
    SCHEMA.add_flags(p, "data_dir", "store_url", *LOGGING_FLAGS)
    p.add_argument("--mandates", action="store_true",
                   help="instead: show that every charge of a period was covered by a valid "
                        "mandate, or name those that were not (exit 1)")
    p.add_argument("--from", dest="from_time", default="", metavar="TIME",
                   help="with --mandates: from this time (RFC 3339 or a date, UTC)")
    p.add_argument("--to", dest="to_time", default="", metavar="TIME",
                   help="with --mandates: until this time, exclusive")
    p.add_argument("--owner", default="", help="with --mandates: only this owner's charges")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("console", help="the web console for owners and auditors")
    CONSOLE_SCHEMA.add_flags(p)
    p.set_defaults(func=cmd_console, schema=CONSOLE_SCHEMA)

    SCHEMA.add_config_show(sub)

    receipts = sub.add_parser("receipts", help="owner side of sealed receipts").add_subparsers(
        dest="receipts_command", required=True)
    _add_key_commands(receipts, "make an X25519 key pair for sealed receipts",
                      cmd_receipts_keygen, cmd_receipts_public_key)
    p = receipts.add_parser("open", help="open sealed receipts or a statement's annex")
    SCHEMA.add_flags(p, *LOGGING_FLAGS)
    p.add_argument("--key", required=True, help="the private key file from `keygen`")
    _add_client_flags(p, "also check the broker's signatures: the broker's address", None)
    p.add_argument("input", nargs="?", default="-",
                   help="JSON of GetReceipt, ListReceipts or GetStatement (grpcurl output); "
                        "- for stdin")
    p.set_defaults(func=cmd_receipts_open)

    vouchers = sub.add_parser("vouchers", help="narrow vouchers offline").add_subparsers(
        dest="vouchers_command", required=True)
    _add_key_commands(vouchers, "make an Ed25519 holder key for narrowable vouchers",
                      cmd_vouchers_keygen)
    p = vouchers.add_parser("narrow", help="derive a narrower voucher, without the broker")
    SCHEMA.add_flags(p, *LOGGING_FLAGS)
    p.add_argument("--voucher", default="-", help="file with the voucher; - for stdin")
    p.add_argument("--key", required=True, help="the holder key file the voucher names")
    p.add_argument("--amount", type=int, required=True, help="micro-credits, at most the "
                   "voucher's")
    p.add_argument("--ttl-seconds", type=int, default=0, help="expire sooner (0: as the voucher)")
    p.add_argument("--model", default="")
    p.add_argument("--resource-class", default="")
    p.add_argument("--worker-id", default="")
    p.add_argument("--max-price", action="append", default=[],
                   help="NAME=MICRO_CREDITS, e.g. gpu_second_price=500 (repeatable)")
    p.add_argument("--next-key-out", default="",
                   help="write a fresh key that may narrow the result again (mode 0600)")
    p.set_defaults(func=cmd_vouchers_narrow)

    mandates = sub.add_parser("mandates", help="an owner's signed mandates").add_subparsers(
        dest="mandates_command", required=True)
    _add_key_commands(mandates, "make an Ed25519 key for signing mandates",
                      cmd_mandates_keygen, cmd_mandates_public_key)
    p = mandates.add_parser("sign", help="sign a mandate offline, print it")
    SCHEMA.add_flags(p, *LOGGING_FLAGS)
    p.add_argument("--key", required=True, help="the private key file from `keygen`")
    p.add_argument("--wallet", required=True, help="the wallet (with its sub-budgets) covered")
    p.add_argument("--agent", default="", help="only this agent key id (default: any)")
    p.add_argument("--per-job", type=int, required=True, help="most micro-credits per job")
    p.add_argument("--total", type=int, required=True, help="most micro-credits in all")
    p.add_argument("--model", action="append", default=[],
                   help="a model it allows (repeatable; default: any)")
    p.add_argument("--ttl-seconds", type=int, default=86_400,
                   help="valid this long (default a day)")
    p.add_argument("--until", default="", help="valid until this time instead (RFC 3339)")
    p.set_defaults(func=cmd_mandates_sign)

    keys = sub.add_parser("keys", help="the broker's signing keys").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("rotate", help="rotate a signing key of a running broker")
    SCHEMA.add_flags(p, *LOGGING_FLAGS)
    p.add_argument("which", choices=["voucher", "receipt"])
    _add_client_flags(p, "the running broker's address")
    p.add_argument("--admin-key-file", required=True, metavar="PATH",
                   help="file holding an admin API key (`broker init --admin-key-file`; "
                        "`make run` writes <data dir>/admin.key)")
    p.set_defaults(func=cmd_keys_rotate)

    p = sub.add_parser("status", help="an owner's treasury, wallets, spend and last receipts")
    SCHEMA.add_flags(p, "data_dir", *LOGGING_FLAGS)
    _add_client_flags(p, "the broker's address")
    p.add_argument("--api-key-file", metavar="PATH",
                   help="file holding an owner API key; default: the demo owner's key from "
                        "the data directory (`make run`)")
    p.add_argument("--receipts", type=int, default=5, metavar="N",
                   help="how many of the last receipts to show (default 5)")
    p.add_argument("--width", type=int, default=0, metavar="COLUMNS",
                   help="table width; default: the terminal's")
    p.set_defaults(func=cmd_status)

    return SCHEMA.run(parser, argv, log)


if __name__ == "__main__":
    sys.exit(main())
