"""Settings of broker and worker: precedence, refusals, `config show`, and the docs."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker.console.settings import SCHEMA as CONSOLE_SCHEMA
from broker.core.config import CoreConfig
from broker.settings import SCHEMA, Settings
from common.settings import SettingsError
from worker import config as worker_config
from worker.config import DEFAULT_PRICES, WorkerConfig

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


def refused(*args, **kwargs) -> str:
    with pytest.raises(SettingsError) as caught:
        SCHEMA.load(*args, **kwargs)
    return str(caught.value)


def test_defaults():
    effective = SCHEMA.load()
    assert effective.settings == Settings()
    assert set(effective.sources.values()) == {"default"}
    assert effective.settings.metrics_listen == "127.0.0.1:9464"
    assert effective.settings.shutdown_grace_seconds == 10.0
    assert effective.settings.core_config() == CoreConfig()
    assert WorkerConfig().metrics_listen == "127.0.0.1:9465"


def test_every_core_setting_is_configurable_with_the_same_default():
    names = {f.name for f in dataclasses.fields(Settings)}
    for f in dataclasses.fields(CoreConfig):
        assert f.name in names, f"CoreConfig.{f.name} has no setting"
        assert getattr(Settings(), f.name) == f.default


def test_flags_beat_env_beat_file_beat_defaults(tmp_path):
    path = write(tmp_path, """
listen = "127.0.0.1:7000"
fee_bps = 100
data_dir = "/srv/broker"

[log]
level = "warning"

[metrics]
listen = ""
""")
    env = {"BROKER_FEE_BPS": "300", "BROKER_LISTEN": "127.0.0.1:7001",
           "BROKER_SHUTDOWN_GRACE_SECONDS": "2.5"}
    effective = SCHEMA.load(path, env, {"listen": "127.0.0.1:7002", "log_format": None})
    s = effective.settings
    assert s.listen == "127.0.0.1:7002"  # flag over env over file
    assert s.fee_bps == 300  # env over file
    assert s.data_dir == "/srv/broker" and s.log_level == "warning"  # file over default
    assert s.metrics_listen == ""  # empty: the endpoint is off
    assert s.shutdown_grace_seconds == 2.5
    assert s.log_format == "text"  # a flag left out (None) changes nothing
    assert s.core_config().fee_bps == 300
    assert effective.sources["listen"] == "flag --listen"
    assert effective.sources["fee_bps"] == "env BROKER_FEE_BPS"
    assert effective.sources["data_dir"] == f"file {path}"
    assert effective.sources["log_format"] == "default"


def test_the_file_can_be_named_by_the_environment(tmp_path):
    path = write(tmp_path, "fee_bps = 7\n")
    assert SCHEMA.load(env={"BROKER_CONFIG": path}).settings.fee_bps == 7
    other = tmp_path / "other.toml"
    other.write_text("fee_bps = 8\n")
    assert SCHEMA.load(str(other), {"BROKER_CONFIG": path}).settings.fee_bps == 8


def test_unknown_keys_are_refused_with_a_suggestion(tmp_path):
    message = refused(write(tmp_path, 'lisen = "127.0.0.1:1"\n'))
    assert "unknown key 'lisen'" in message and "did you mean 'listen'" in message
    message = refused(write(tmp_path, "[metrics]\nport = 9464\n"))
    assert "unknown key 'metrics.port'" in message
    message = refused(write(tmp_path, "[nonsense]\nx = 1\n"))
    assert "unknown key 'nonsense'" in message


@pytest.mark.parametrize(("text", "expected"), [
    ('fee_bps = "250"', "fee_bps = '250': expected an integer"),
    ("fee_bps = true", "fee_bps = True: expected an integer"),
    ("fee_bps = 10001", "fee_bps = 10001: must be at most 10000"),
    ("fee_bps = -1", "must be at least 0"),
    ("max_ttl_ms = 1.5", "expected an integer"),
    ('listen = "50051"', "expected host:port"),
    ('data_dir = ""', "must not be empty"),
    ('metrics.listen = "localhost"', "expected host:port"),
    ('log.format = "xml"', "expected one of text, json"),
    ('log.level = "loud"', "expected one of debug, info, warning, error"),
    ("shutdown.grace_seconds = -1", "must be at least 0"),
    ("default_ttl_ms = 90000000", "default_ttl_ms (90000000) must not exceed max_ttl_ms"),
    ('tls.key = "k.pem"', "tls.cert and tls.key must be set together"),
    ('tls.client_ca = "ca.pem"\ntls.cert = "c"\ntls.key = "k"', None),
    ('tls.client_ca = "ca.pem"', "tls.client_ca (mTLS) needs tls.cert and tls.key"),
    ("fee_bps = ", "not valid TOML"),
])
def test_bad_values_in_the_file_are_refused(tmp_path, text, expected):
    path = write(tmp_path, text + "\n")
    if expected is None:
        assert SCHEMA.load(path).settings.tls_client_ca == "ca.pem"
        return
    message = refused(path)
    assert expected in message
    if "must not exceed" not in message and "tls" not in text:
        assert path in message  # says where


def test_bad_values_in_env_and_flags_say_where_they_came_from():
    assert "environment BROKER_FEE_BPS: fee_bps = 'lots': expected an integer" in refused(
        env={"BROKER_FEE_BPS": "lots"})
    assert "flag --log-format: log.format = 'xml'" in refused(flags={"log_format": "xml"})
    assert "flag --metrics-listen" in refused(flags={"metrics_listen": "9464"})
    assert "environment BROKER_SWEEP_INTERVAL_MS" in refused(
        env={"BROKER_SWEEP_INTERVAL_MS": "1"})


def test_choices_are_case_insensitive():
    effective = SCHEMA.load(env={"BROKER_LOG_LEVEL": "DEBUG", "BROKER_LOG_FORMAT": "Json"})
    assert (effective.settings.log_level, effective.settings.log_format) == ("debug", "json")


def test_missing_file():
    assert "cannot read config file /nonexistent/x.toml" in refused("/nonexistent/x.toml")


def test_unknown_variables_with_the_prefix_are_reported_not_fatal():
    effective = SCHEMA.load(env={"BROKER_LISTN": "x", "BROKER_CONFIG": "", "OTHER": "y"})
    assert effective.warnings == ["ignoring unknown environment variable BROKER_LISTN"]
    assert effective.settings == Settings()


def test_show_is_toml_with_every_value_and_its_source(tmp_path):
    path = write(tmp_path, "fee_bps = 5\n[log]\nformat = \"json\"\n")
    effective = SCHEMA.load(path, {"BROKER_MAX_TTL_MS": "7200000"}, {"listen": "[::1]:1"})
    shown = SCHEMA.show(effective)
    parsed = tomllib.loads(shown)
    flat = {**{k: v for k, v in parsed.items() if not isinstance(v, dict)},
            **{f"{t}.{k}": v for t, table in parsed.items() if isinstance(table, dict)
               for k, v in table.items()}}
    expected = {o.key: getattr(effective.settings, o.name) for o in SCHEMA.options}
    assert flat == expected
    assert re.search(r'^listen = "\[::1\]:1"  # flag --listen$', shown, re.M)
    assert re.search(r"^max_ttl_ms = 7200000  # env BROKER_MAX_TTL_MS$", shown, re.M)
    assert re.search(rf"^fee_bps = 5  # file {re.escape(path)}$", shown, re.M)
    assert re.search(r"^grace_seconds = 10.0  # default$", shown, re.M)


def test_secret_looking_settings_are_secret_or_file_names():
    looked_at = []
    for schema in (SCHEMA, worker_config.SCHEMA):
        for o in schema.options:
            if re.search(r"(^|_)(key|secret|token|password|passphrase)$", o.name):
                looked_at.append(o.name)
                assert o.spec.secret or o.spec.path, f"{o.key} looks secret: mark it secret"
    assert {"tls_key", "api_key"} <= set(looked_at)


def test_worker_settings(tmp_path):
    path = write(tmp_path, """
max_concurrent_jobs = 2
[prices]
gpu_second_price = 5
[checkpoints]
my-lm = "/models/my-lm.pt"
""")
    effective = worker_config.SCHEMA.load(path, {"WORKER_HANDLER_MODULES": "a.b, c.d",
                                                 "WORKER_API_KEY": "cbk_inline"},
                                          {"listen": "127.0.0.1:6000"})
    config = effective.settings
    assert config.max_concurrent_jobs == 2 and config.listen == "127.0.0.1:6000"
    assert config.prices == {**DEFAULT_PRICES, "gpu_second_price": 5}  # the rest: defaults
    assert config.checkpoints == {"my-lm": "/models/my-lm.pt"}
    assert config.handler_modules == ["a.b", "c.d"]
    assert config.read_api_key() == "cbk_inline"  # the inline key wins over the file
    shown = worker_config.SCHEMA.show(effective)
    assert 'api_key = "***"  # env WORKER_API_KEY' in shown and "cbk_inline" not in shown
    assert tomllib.loads(shown)["prices"]["gpu_second_price"] == 5


@pytest.mark.parametrize(("text", "expected"), [
    ("[prices]\ngpu_second_price = -1", "prices must be non-negative integers"),
    ("[prices]\nbogus_price = 1", "['bogus_price']"),
    ('[prices]\ncall_price = "1"', "expected a table of int values"),
    ("max_concurrent_jobs = 0", "must be at least 1"),
    ('handler_modules = "x"', "expected a list of strings"),
    ("[metrics]\nlisten = 9465", "expected a string"),
])
def test_worker_refuses_bad_values(tmp_path, text, expected):
    with pytest.raises(SettingsError) as caught:
        worker_config.SCHEMA.load(write(tmp_path, text + "\n"))
    assert expected in str(caught.value)


def test_a_missing_api_key_file_is_a_settings_error(tmp_path):
    config = WorkerConfig(api_key_file=str(tmp_path / "nope"))
    with pytest.raises(SettingsError, match="not found"):
        config.read_api_key()


# -- the command lines ----------------------------------------------------------------


def cli(program: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "WORKER_"))}
    return subprocess.run([sys.executable, "-m", f"{program}.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


def test_broker_config_show(tmp_path):
    path = write(tmp_path, "fee_bps = 42\n")
    result = cli("broker", "config", "show", "--config", path, "--log-level", "debug",
                 env={"BROKER_DATA_DIR": "/srv/b"})
    assert result.returncode == 0, result.stderr
    parsed = tomllib.loads(result.stdout)
    assert parsed["fee_bps"] == 42 and parsed["data_dir"] == "/srv/b"
    assert parsed["log"]["level"] == "debug" and parsed["metrics"]["listen"] == "127.0.0.1:9464"


def test_worker_config_show_masks_the_api_key():
    result = cli("worker", "config", "show", env={"WORKER_API_KEY": "cbk_very_secret_value"})
    assert result.returncode == 0, result.stderr
    assert "cbk_very_secret_value" not in result.stdout + result.stderr
    assert tomllib.loads(result.stdout)["api_key"] == "***"


@pytest.mark.parametrize(("program", "args", "env", "expected"), [
    ("broker", ("serve", "--fee-bps", "x"), {}, "flag --fee-bps: fee_bps = 'x'"),
    ("broker", ("audit",), {"BROKER_LOG_FORMAT": "xml"}, "environment BROKER_LOG_FORMAT"),
    ("broker", ("config", "show", "--config", "/nonexistent.toml"), {}, "cannot read"),
    ("worker", ("serve", "--metrics-listen", "nope"), {}, "expected host:port"),
    ("worker", ("config", "show"), {"WORKER_MAX_CONCURRENT_JOBS": "0"}, "at least 1"),
    ("worker", ("verify-voucher", "--broker-order", "nearest", "x"), {},
     "flag --broker-order: broker_order = 'nearest': expected one of spread, listed"),
    ("worker", ("serve",), {"WORKER_BROKER_ORDER": "first"}, "environment WORKER_BROKER_ORDER"),
])
def test_bad_settings_exit_2_with_a_clear_message(program, args, env, expected):
    result = cli(program, *args, env=env)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


# -- the docs are generated from the schema ----------------------------------------------


@pytest.mark.parametrize(("name", "schema"), [("broker", SCHEMA),
                                              ("worker", worker_config.SCHEMA),
                                              ("console", CONSOLE_SCHEMA)])
def test_docs_list_every_setting(name, schema):
    text = OPERATIONS.read_text()
    begin, end = f"<!-- settings:{name} -->\n", f"<!-- /settings:{name} -->"
    assert begin in text and end in text, f"markers for {name} missing in {OPERATIONS}"
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == schema.markdown(), \
        "docs/operations.md is stale: run .venv/bin/python scripts/settings_doc.py"
