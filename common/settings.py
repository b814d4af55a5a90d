"""Settings: defaults < one TOML file < environment variables < command-line flags.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`:
type, default, meaning, TOML key and checks live in that one declaration. Everything
else is derived from it: the environment variable (prefix + FIELD_NAME), the flag
(--field-name), the flags' help, `config show`, and the tables in docs/operations.md
(a test keeps those in step). The broker's settings are `broker.settings.Settings`; the
worker's are `worker.config.WorkerConfig`.

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
from typing import Any, Generic, TypeVar, cast

from . import logs

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
    flag: str = ""  # the flag's name when not --<field name> (e.g. --store)
    # How `config show` and errors show the value when part of it is secret (a DSN's
    # password); None: as it is (or *** when `secret`).
    shown: Callable[[Any], str] | None = None


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
        for f in dataclasses.fields(cast(Any, cls)):
            spec = f.metadata["spec"]
            kind, item = _kind(hints[f.name])
            factory: Any = f.default_factory
            default = factory() if f.default is dataclasses.MISSING else f.default
            self.options.append(Option(
                name=f.name, key=spec.key or f.name, kind=kind, item=item, default=default,
                spec=spec, env="" if spec.file_only else env_prefix + f.name.upper(),
                flag="" if spec.file_only or spec.secret else
                spec.flag or "--" + f.name.replace("_", "-")))
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
        shown = MASK if option.spec.secret else repr(_shown(option, value))
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
        and run the chosen subcommand's `func(args, effective)`. A subcommand with
        settings of its own names their schema with `set_defaults(schema=...)`."""
        args = parser.parse_args(argv)
        try:
            effective = getattr(args, "schema", self).load_args(args, os.environ)
        except SettingsError as error:
            print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
            return 2
        settings: Any = effective.settings  # every schema's class has the log settings
        logs.configure(settings.log_format, settings.log_level)
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
            shown = MASK if o.spec.secret and value else _shown(o, value)
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


def _shown(option: Option, value: Any) -> Any:
    return option.spec.shown(value) if option.spec.shown and isinstance(value, str) else value


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


def tls_problems(cert: str, key: str, client_ca: str) -> list[str]:
    if bool(cert) != bool(key):
        return ["tls.cert and tls.key must be set together"]
    if client_ca and not cert:
        return ["tls.client_ca (mTLS) needs tls.cert and tls.key"]
    return []
