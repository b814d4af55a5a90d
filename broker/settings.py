"""Settings: defaults < one TOML file < environment variables < command-line flags.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`:
type, default, meaning, TOML key and checks live in that one declaration. Everything
else is derived from it: the environment variable (prefix + FIELD_NAME), the flag
(--field-name), the flags' help, `config show`, and the tables in docs/operations.md
(a test keeps those in step). The broker's settings are `Settings` below; the worker's
are `worker.config.WorkerConfig`.

Nothing is silently ignored: an unknown key in the file, a value of the wrong type
or out of range is a `SettingsError` naming where it came from (the CLIs exit 2).
Unknown variables with the prefix only produce warnings: the environment is shared
with other programs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import logs
from .core.config import CoreConfig

T = TypeVar("T")

MASK = "***"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(Exception):
    """A setting that cannot be used; the message says which, where from and why."""


@dataclass(frozen=True)
class Spec:
    help: str
    key: str = ""  # dotted TOML key; the field name when empty
    choices: tuple[str, ...] = ()  # compared and stored in lower case
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None
    secret: bool = False  # no flag (ps shows flags); `config show` masks it; errors hide it
    path: bool = False  # a file or directory name (not itself a secret)
    file_only: bool = False  # a free-form table: no variable, no flag


def setting(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field carrying its `Spec`."""
    meta = {"spec": Spec(help=help, **spec)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- checks shared by the broker and the worker -------------------------------------

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def split_host_port(address: str) -> tuple[str, int]:
    """'127.0.0.1:9464' -> ('127.0.0.1', 9464); '[::1]:9464' -> ('::1', 9464)."""
    match = _HOST_PORT.match(address)
    if not match or int(match[2]) > 65535:
        raise ValueError(f"{address!r} is not host:port")
    return match[1].strip("[]"), int(match[2])


def host_port(value: str) -> str | None:
    try:
        split_host_port(value)
    except ValueError:
        return "expected host:port, e.g. 127.0.0.1:9464"
    return None


def host_port_or_empty(value: str) -> str | None:
    return None if value == "" else host_port(value)


def grpc_listen(value: str) -> str | None:
    """A gRPC server address: host:port, or unix:PATH."""
    if value.startswith("unix:") and len(value) > 5:
        return None
    return None if host_port(value) is None else \
        "expected host:port (e.g. 127.0.0.1:50051) or unix:PATH"


def not_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


# -- the schema derived from a settings dataclass ------------------------------------


@dataclass(frozen=True)
class Option:
    name: str  # field name
    key: str  # dotted TOML key
    kind: str  # str, int, float, bool, list (of str) or table (str -> item type)
    item: type | None  # value type of a table
    default: Any
    spec: Spec
    env: str
    flag: str


def _kind(annotation: Any) -> tuple[str, type | None]:
    origin = typing.get_origin(annotation)
    if origin is list:
        return "list", None
    if origin is dict:
        return "table", typing.get_args(annotation)[1]
    if annotation in (str, int, float, bool):
        return annotation.__name__, None
    raise TypeError(f"unsupported setting type {annotation!r}")


@dataclass
class Effective(Generic[T]):
    """Loaded settings, where each value came from, and warnings to log."""

    settings: T
    sources: dict[str, str]
    warnings: list[str]


class Schema(Generic[T]):
    def __init__(self, cls: type[T], env_prefix: str,
                 cross_check: Callable[[T], list[str]] | None = None):
        self.cls = cls
        self.env_prefix = env_prefix
        self.cross_check = cross_check
        hints = typing.get_type_hints(cls)
        self.options: list[Option] = []
        for f in dataclasses.fields(cls):
            spec = f.metadata["spec"]
            kind, item = _kind(hints[f.name])
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            self.options.append(Option(
                name=f.name, key=spec.key or f.name, kind=kind, item=item, default=default,
                spec=spec, env="" if spec.file_only else env_prefix + f.name.upper(),
                flag="" if spec.file_only or spec.secret else "--" + f.name.replace("_", "-")))
        self.by_key = {o.key: o for o in self.options}

    @property
    def config_env(self) -> str:
        return self.env_prefix + "CONFIG"

    # -- loading ----------------------------------------------------------------

    def load(self, config_file: str | None = None, env: Mapping[str, str] | None = None,
             flags: Mapping[str, Any] | None = None) -> Effective[T]:
        """Defaults, then the file (or the file named by PREFIX_CONFIG), then the
        PREFIX_* variables of `env`, then `flags` (field name -> text or value)."""
        env = {} if env is None else env
        values = {o.name: o.default for o in self.options}
        sources = dict.fromkeys(values, "default")
        config_file = config_file or env.get(self.config_env) or None
        if config_file:
            for option, value in self._read_file(config_file):
                values[option.name] = self._typed(option, value, f"config file {config_file}")
                sources[option.name] = f"file {config_file}"
        warnings = []
        known_env = {o.env for o in self.options if o.env} | {self.config_env}
        for name in sorted(env):
            if name.startswith(self.env_prefix) and name not in known_env:
                warnings.append(f"ignoring unknown environment variable {name}")
        for option in self.options:
            if option.env and option.env in env:
                values[option.name] = self._parsed(option, env[option.env],
                                                   f"environment {option.env}")
                sources[option.name] = f"env {option.env}"
        by_name = {o.name: o for o in self.options}
        for name, value in (flags or {}).items():
            if value is None:
                continue
            option = by_name[name]
            where = f"flag {option.flag}"
            values[name] = self._parsed(option, value, where) if isinstance(value, str) \
                else self._typed(option, value, where)
            sources[name] = where
        settings = self.cls(**values)
        problems = self.cross_check(settings) if self.cross_check else []
        if problems:
            raise SettingsError("; ".join(problems))
        return Effective(settings, sources, warnings)

    def _read_file(self, path: str) -> Iterator[tuple[Option, Any]]:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as error:
            raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SettingsError(f"config file {path} is not valid TOML: {error}") from None
        yield from self._flatten(data, "", path)

    def _flatten(self, table: dict, prefix: str, path: str) -> Iterator[tuple[Option, Any]]:
        for name, value in table.items():
            key = prefix + name
            if key in self.by_key:
                yield self.by_key[key], value
            elif isinstance(value, dict) and any(k.startswith(key + ".") for k in self.by_key):
                yield from self._flatten(value, key + ".", path)
            else:
                close = difflib.get_close_matches(key, list(self.by_key), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SettingsError(f"config file {path}: unknown key {key!r}{hint}")

    def _typed(self, option: Option, value: Any, where: str) -> Any:
        """A value from TOML (or a typed flag value)."""
        kind = option.kind
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
            "table": isinstance(value, dict) and all(
                isinstance(k, str) and _is(v, option.item) for k, v in value.items()),
        }[kind]
        if not ok:
            raise self._error(option, value, where, f"expected {_describe(option)}")
        if kind == "float":
            value = float(value)
        elif kind == "table":  # keys left out keep their default
            value = {**option.default, **value}
        return self._checked(option, value, where)

    def _parsed(self, option: Option, text: str, where: str) -> Any:
        """A value from the environment or a flag (text)."""
        kind = option.kind
        try:
            if kind == "int":
                value: Any = int(text.strip())
            elif kind == "float":
                value = float(text.strip())
            elif kind == "bool":
                value = {"true": True, "1": True, "yes": True, "on": True, "false": False,
                         "0": False, "no": False, "off": False}[text.strip().lower()]
            elif kind == "list":
                value = [part.strip() for part in text.split(",") if part.strip()]
            else:
                value = text
        except (ValueError, KeyError):
            raise self._error(option, text, where, f"expected {_describe(option)}") from None
        return self._checked(option, value, where)

    def _checked(self, option: Option, value: Any, where: str) -> Any:
        spec = option.spec
        if spec.choices:
            value = value.lower()
            if value not in spec.choices:
                raise self._error(option, value, where,
                                  f"expected one of {', '.join(spec.choices)}")
        if spec.minimum is not None and value < spec.minimum:
            raise self._error(option, value, where, f"must be at least {spec.minimum:g}")
        if spec.maximum is not None and value > spec.maximum:
            raise self._error(option, value, where, f"must be at most {spec.maximum:g}")
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise self._error(option, value, where, problem)
        return value

    @staticmethod
    def _error(option: Option, value: Any, where: str, why: str) -> SettingsError:
        shown = MASK if option.spec.secret else repr(value)
        return SettingsError(f"{where}: {option.key} = {shown}: {why}")

    # -- command line -----------------------------------------------------------

    def add_flags(self, parser: argparse.ArgumentParser, *names: str) -> None:
        """--config and a flag per setting (only `names`, when given)."""
        parser.add_argument("--config", metavar="FILE",
                            help=f"TOML settings file (env {self.config_env}); default none")
        for o in self.options:
            if not o.flag or (names and o.name not in names):
                continue
            default = _toml_value(o.default)
            text = f"{o.spec.help} [{o.key}; env {o.env}; default {default}]"
            kwargs: dict[str, Any] = {"dest": o.name, "default": None,
                                      "help": text.replace("%", "%%")}
            if o.kind == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            elif o.spec.choices:
                kwargs["metavar"] = "{" + ",".join(o.spec.choices) + "}"
            else:
                kwargs["metavar"] = "PATH" if o.spec.path else {
                    "str": "TEXT", "int": "N", "float": "X", "list": "A,B"}[o.kind]
            parser.add_argument(o.flag, **kwargs)

    def load_args(self, args: argparse.Namespace,
                  env: Mapping[str, str] | None = None) -> Effective[T]:
        flags = {o.name: getattr(args, o.name, None) for o in self.options}
        return self.load(getattr(args, "config", None), env, flags)

    def add_config_show(self, sub: argparse._SubParsersAction) -> None:
        """The `config show` subcommand, the same for every program."""
        p = sub.add_parser("config", help="inspect the settings")
        config_sub = p.add_subparsers(dest="config_command", required=True)
        p = config_sub.add_parser("show", help="print the effective settings as TOML, each "
                                               "with its source; secrets masked")
        self.add_flags(p)
        p.set_defaults(func=self._config_show)

    def _config_show(self, args: argparse.Namespace, effective: Effective[T]) -> int:
        print(self.show(effective), end="")
        return 0

    def run(self, parser: argparse.ArgumentParser, argv: list[str] | None,
            log: logging.Logger) -> int:
        """Parse `argv`, load the settings (exit status 2 on bad ones), set up logging
        and run the chosen subcommand's `func(args, effective)`."""
        args = parser.parse_args(argv)
        try:
            effective = self.load_args(args, os.environ)
        except SettingsError as error:
            print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
            return 2
        logs.configure(effective.settings.log_format, effective.settings.log_level)
        for warning in effective.warnings:
            log.warning("%s", warning)
        return args.func(args, effective)

    # -- output -----------------------------------------------------------------

    def show(self, effective: Effective[T]) -> str:
        """The effective settings as TOML, each with where it came from; secrets masked."""
        sections: dict[str, list[str]] = {"": []}
        for o in self.options:
            value = getattr(effective.settings, o.name)
            source = effective.sources[o.name]
            if o.kind == "table":
                lines = sections.setdefault(o.key, [f"# {source}"])
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
                continue
            section, _, leaf = o.key.rpartition(".")
            shown = MASK if o.spec.secret and value else value
            sections.setdefault(section, []).append(
                f"{leaf} = {_toml_value(shown)}  # {source}")
        out = [f"# effective settings: defaults < config file < {self.env_prefix}* "
               "environment < flags"]
        for section, lines in sections.items():
            if section:
                out += ["", f"[{section}]"]
            out += lines
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        """The settings table for docs/operations.md."""
        rows = ["| Key | Environment | Flag | Default | Meaning |",
                "|-----|-------------|------|---------|---------|"]
        for o in self.options:
            env = f"`{o.env}`" if o.env else "(file only)"
            flag = f"`{o.flag}`" if o.flag else "(file only)" if o.spec.file_only else \
                "(none: secret)"
            meaning = o.spec.help + (" Secret: shown as `***`." if o.spec.secret else "")
            default = _toml_value(o.default).replace("|", "\\|")
            rows.append(f"| `{o.key}` | {env} | {flag} | `{default}` | {meaning} |")
        return "\n".join(rows) + "\n"


def _is(value: Any, item: type | None) -> bool:
    if item is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, item) if item is not None else False


def _describe(option: Option) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number",
            "bool": "true or false", "list": "a list of strings",
            "table": f"a table of {getattr(option.item, '__name__', '?')} values"}[option.kind]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m[0]):04x}", escaped) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


# -- the broker's settings -------------------------------------------------------------


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


def tls_problems(cert: str, key: str, client_ca: str) -> list[str]:
    if bool(cert) != bool(key):
        return ["tls.cert and tls.key must be set together"]
    if client_ca and not cert:
        return ["tls.client_ca (mTLS) needs tls.cert and tls.key"]
    return []


SCHEMA = Schema(Settings, "BROKER_", _broker_cross_check)
