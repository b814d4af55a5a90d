"""The console's pure parts: session expiry and CSRF checks, CSV cells that cannot
become spreadsheet formulas, and its settings."""

from __future__ import annotations

import pytest

from broker.console import views
from broker.console.sessions import Sessions
from broker.console.settings import SCHEMA, ConsoleSettings
from common.settings import SettingsError

IDENTITY = views.Identity("owner", "own_1")


def test_a_session_ends_when_idle_or_too_old_and_its_csrf_token_must_match():
    sessions = Sessions(idle_s=60, max_s=300)
    sid = sessions.create(object(), IDENTITY, now_s=1000)
    session = sessions.get(sid, 1059)
    assert session is not None and session.identity == IDENTITY
    assert session.csrf_ok(session.csrf_token)
    assert not session.csrf_ok("forged") and not session.csrf_ok("") and not session.csrf_ok(None)
    assert sessions.get(sid, 1118) is not None  # used at 1059: still within 60 s idle
    assert sessions.get(sid, 1179, touch=False) is None  # idle for 61 s: gone for good
    assert sessions.get(sid, 1180) is None

    old = sessions.create(object(), IDENTITY, now_s=2000)
    for t in range(2050, 2300, 50):  # kept busy, yet ends 300 s after sign-in
        assert sessions.get(old, t) is not None
    assert sessions.get(old, 2301) is None
    assert sessions.get("unknown", 2000) is None and sessions.get(None, 2000) is None


def test_a_live_stream_does_not_keep_an_idle_session_alive():
    sessions = Sessions(idle_s=60, max_s=3600)
    sid = sessions.create(object(), IDENTITY, now_s=0)
    for t in range(10, 60, 10):
        assert sessions.get(sid, t, touch=False) is not None
    assert sessions.get(sid, 61, touch=False) is None


def test_signing_out_ends_the_session_and_ids_are_unguessable():
    sessions = Sessions(idle_s=60, max_s=300)
    a, b = (sessions.create(object(), IDENTITY, 0) for _ in range(2))
    assert a != b and len(a) >= 40
    sessions.end(a)
    assert sessions.get(a, 1) is None and sessions.get(b, 1) is not None


def test_csv_cells_never_start_a_formula():
    text = views.to_csv([["name", "charged"], ["=HYPERLINK(\"x\")", "5"], ["+1", "6"],
                         ["@cmd", "7"], ["-2", "8"], ["plain", "9"]])
    assert text.splitlines() == ["name,charged", "\"'=HYPERLINK(\"\"x\"\")\",5", "'+1,6",
                                 "'@cmd,7", "'-2,8", "plain,9"]


def test_console_settings_default_to_loopback_and_check_tls_pairs():
    effective = SCHEMA.load()
    assert effective.settings == ConsoleSettings()
    assert effective.settings.listen == "127.0.0.1:8080"
    with pytest.raises(SettingsError, match="tls.cert and tls.key"):
        SCHEMA.load(flags={"tls_cert": "cert.pem"})
    with pytest.raises(SettingsError, match="broker_client_cert"):
        SCHEMA.load(flags={"broker_client_key": "key.pem"})
    with pytest.raises(SettingsError, match="host:port"):
        SCHEMA.load(env={"BROKER_CONSOLE_LISTEN": "8080"})
