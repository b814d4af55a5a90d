"""The console's HTTP server (stdlib, one thread per request): static pages, a JSON API
that calls the broker with the session's key, and a server-sent event stream of
pending approvals and new alerts.

Security: the API key is read once, from the sign-in request's JSON body, and lives
only in the session (memory). The session id travels in an HttpOnly, SameSite=Strict
cookie; every change (POST) needs the session's CSRF token in X-CSRF-Token and a JSON
body (a cross-site form cannot send one); every answer carries a strict
Content-Security-Policy. Request lines are logged without their query strings."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import ssl
import threading
import time
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc

from common import tls
from common.settings import split_host_port

from ..client import BrokerClientError
from . import views
from .broker_calls import ConsoleClient
from .sessions import Session, Sessions
from .settings import ConsoleSettings

log = logging.getLogger("broker.console")

STATIC = Path(__file__).with_name("static")
COOKIE = "console_session"
MAX_BODY = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
SIGN_IN_REFUSALS = {
    "API_KEY_MISSING": "Paste an API key to sign in.",
    "API_KEY_INVALID": "This API key is not valid.",
    "API_KEY_REVOKED": "This API key was revoked.",
    "ROLE_NOT_ALLOWED": "The console is for owner and auditor keys; this key cannot sign in.",
}
LIVE_POLL_S = 1.0
KEEPALIVE_S = 5.0


class HttpError(Exception):
    def __init__(self, status: int, message: str, reason: str = ""):
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class Console(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: ConsoleSettings, channel: grpc.Channel,
                 ssl_context: ssl.SSLContext | None = None):
        host, port = split_host_port(settings.listen)
        self.settings, self.channel, self.ssl_context = settings, channel, ssl_context
        self.sessions = Sessions(settings.session_idle_seconds, settings.session_max_seconds)
        self.stopping = threading.Event()
        super().__init__((host, port), Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the request's own thread, never in the accept loop.
        if self.ssl_context is not None:
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as error:
                log.info("TLS handshake with %s failed: %s", client_address[0],
                         type(error).__name__)
                return
        super().finish_request(request, client_address)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Console
    protocol_version = "HTTP/1.1"
    server_version = "broker-console"
    sys_version = ""

    # -- dispatch -------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(GET_ROUTES)

    def do_POST(self) -> None:
        self._dispatch(POST_ROUTES)

    def _dispatch(self, routes: dict) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.status = 500
        try:
            self.raw_body = self._read_body() if self.command == "POST" else b""
            route = routes.get(url.path)
            if route is None:
                if self.command == "GET" and url.path.startswith("/static/"):
                    return self._static(url.path.removeprefix("/static/"))
                raise HttpError(404, "not found")
            route(self)
        except HttpError as error:
            self._json({"error": error.message, "reason": error.reason}, error.status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("%s %s failed", self.command, url.path)
            self.close_connection = True
            self._json({"error": "the console failed to answer; see its log"}, 500)
        finally:
            log.info("%s %s %s %dms", self.command, url.path, self.status,
                     (time.monotonic() - started) * 1000)

    def log_message(self, format, *args) -> None:  # noqa: A002 - the stdlib's name
        """The stdlib's own lines (with query strings) are replaced by _dispatch's."""

    # -- responses ------------------------------------------------------------------

    def _headers(self, status: int, content_type: str, length: int | None,
                 extra: dict[str, str] | None = None) -> None:
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        if self.server.ssl_context is not None:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        self.end_headers()

    def _send(self, body: bytes, content_type: str, status: int = 200,
              extra: dict[str, str] | None = None) -> None:
        self._headers(status, content_type, len(body),
                      {"Cache-Control": "no-store", **(extra or {})})
        self.wfile.write(body)

    def _json(self, value, status: int = 200, extra: dict[str, str] | None = None) -> None:
        self._send(json.dumps(value).encode(), "application/json", status, extra)

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if not path.is_relative_to(STATIC.resolve()) or not path.is_file() \
                or path.suffix not in CONTENT_TYPES:
            raise HttpError(404, "not found")
        self._send(path.read_bytes(), CONTENT_TYPES[path.suffix])

    def _cookie(self, value: str, max_age: int) -> dict[str, str]:
        secure = "; Secure" if self.server.ssl_context is not None else ""
        return {"Set-Cookie": f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; "
                              f"SameSite=Strict{secure}"}

    # -- requests -------------------------------------------------------------------

    def _session_id(self) -> str | None:
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel else None

    def _session(self, *, touch: bool = True) -> Session:
        session = self.server.sessions.get(self._session_id(), time.monotonic(), touch=touch)
        if session is None:
            raise HttpError(401, "You are signed out (or your session expired): sign in "
                                 "again.", "SESSION_EXPIRED")
        return session

    def _change(self) -> tuple[Session, dict]:
        """A state-changing request: session, CSRF token and a JSON body."""
        session = self._session()
        if not session.csrf_ok(self.headers.get("X-CSRF-Token")):
            raise HttpError(403, "The request's CSRF token is missing or wrong: reload the "
                                 "page.", "CSRF_TOKEN_INVALID")
        return session, self._body()

    def _read_body(self) -> bytes:
        """The whole request body, read before anything else so that an early refusal
        never leaves part of it on a kept-alive connection."""
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            raise HttpError(413, "the request body is too large")
        return self.rfile.read(length)

    def _body(self) -> dict:
        if self.headers.get_content_type() != "application/json":
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        try:
            body = json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return body

    def _call(self, session: Session, fn, *args):
        """A broker call with the session's key; its refusal becomes a clear HTTP error.
        A key revoked since sign-in ends the session."""
        try:
            return fn(session.client, *args)
        except BrokerClientError as error:
            if error.code == grpc.StatusCode.UNAUTHENTICATED:
                self.server.sessions.end(self._session_id())
            raise HttpError(HTTP_STATUS.get(error.code, 502), _details(error),
                            error.reason) from None

    # -- pages ----------------------------------------------------------------------

    def index(self) -> None:
        self._send((STATIC / "index.html").read_bytes(), CONTENT_TYPES[".html"])

    def get_session(self) -> None:
        session = self._session()
        self._json({"role": session.identity.role, "owner_id": session.identity.owner_id,
                    "csrf_token": session.csrf_token})

    def sign_in(self) -> None:
        body = self._body()
        api_key = body.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            raise HttpError(400, SIGN_IN_REFUSALS["API_KEY_MISSING"], "API_KEY_MISSING")
        api_key = api_key.strip()
        if len(api_key) > 200 or not api_key.isascii() or not api_key.isprintable() \
                or " " in api_key:  # could not even travel as gRPC metadata
            raise HttpError(401, SIGN_IN_REFUSALS["API_KEY_INVALID"], "API_KEY_INVALID")
        client = ConsoleClient(self.server.channel, api_key)
        try:
            identity = views.identify(client, _now_ms())
        except BrokerClientError as error:
            if error.code == grpc.StatusCode.INVALID_ARGUMENT:  # a key of no one tenant
                raise HttpError(403, SIGN_IN_REFUSALS["ROLE_NOT_ALLOWED"],
                                "ROLE_NOT_ALLOWED") from None
            message = SIGN_IN_REFUSALS.get(error.reason, _details(error))
            raise HttpError(HTTP_STATUS.get(error.code, 502), message, error.reason) from None
        self.server.sessions.end(self._session_id())
        session_id = self.server.sessions.create(client, identity, time.monotonic())
        session = self.server.sessions.get(session_id, time.monotonic())
        log.info("signed in: %s of %s", identity.role, identity.owner_id)
        self._json({"role": identity.role, "owner_id": identity.owner_id,
                    "csrf_token": session.csrf_token},
                   extra=self._cookie(session_id, self.server.settings.session_max_seconds))

    def sign_out(self) -> None:
        self._change()
        self.server.sessions.end(self._session_id())
        self._json({}, extra=self._cookie("", 0))

    def overview(self) -> None:
        session = self._session()
        self._json(self._call(session, views.overview, session.identity))

    def spend(self) -> None:
        granularity = self.query.get("granularity", "hour")
        if granularity not in views.GRANULARITIES:
            raise HttpError(400, "granularity must be hour or day")
        try:
            series = self._call(self._session(), views.spend_series, granularity, _now_ms())
        except views.TooManyPeriods as error:
            raise HttpError(400, str(error)) from None
        self._json(series)

    def approvals(self) -> None:
        self._json({"approvals": self._call(self._session(), views.approvals)})

    def decide(self, approve: bool) -> None:
        session, body = self._change()
        authorization_id = _text(body, "authorization_id")
        reason = _text(body, "reason", required=not approve)
        method = ConsoleClient.approve if approve else ConsoleClient.deny
        approval = self._call(session, method, authorization_id, reason)
        log.info("%s %s", "approved" if approve else "denied", authorization_id)
        self._json({"approval": views.as_json(approval)})

    def alerts(self) -> None:
        alerts = self._call(self._session(), ConsoleClient.list_alerts)
        self._json({"alerts": [views.as_json(a) for a in alerts]})

    def set_frozen(self, frozen: bool) -> None:
        session, body = self._change()
        wallet = self._call(session, ConsoleClient.freeze, _text(body, "wallet_id"), frozen)
        log.info("%s %s", "froze" if frozen else "unfroze", wallet.wallet_id)
        self._json({"wallet": views.as_json(wallet)})

    def receipts(self) -> None:
        self._json({"receipts": self._call(self._session(), views.receipts)})

    def receipt(self) -> None:
        session = self._session()
        authorization_id = self.query.get("authorization_id", "")
        if not authorization_id:
            raise HttpError(400, "authorization_id is required")
        receipt = self._call(session, ConsoleClient.get_receipt, authorization_id)
        keys = self._call(session, ConsoleClient.receipt_signing_keys)
        self._json({"receipt": views.as_json(receipt),
                    "signing_keys": {k: _b64(v) for k, v in keys.items()}})

    def receipt_key(self) -> None:
        key = self._call(self._session(), ConsoleClient.receipt_key)
        self._json({"receipt_key": views.as_json(key) if key is not None else None})

    def register_receipt_key(self) -> None:
        session, body = self._change()
        try:
            public_key = base64.b64decode(_text(body, "public_key"), validate=True)
        except binascii.Error:
            raise HttpError(400, "public_key must be base64") from None
        key = self._call(session, ConsoleClient.register_receipt_key, public_key)
        log.info("registered receipt key %s", key.key_id)
        self._json({"receipt_key": views.as_json(key)})

    def statement_csv(self) -> None:
        session = self._session()
        granularity = self.query.get("granularity", "day")
        if granularity not in views.GRANULARITIES:
            raise HttpError(400, "granularity must be hour or day")
        start, end = _day(self.query.get("start", "")), _day(self.query.get("end", ""))
        if end <= start:
            raise HttpError(400, "the end must be after the start")
        end += views.DAY_MS  # the end day is included
        try:
            rows = self._call(session, views.statement_rows, start, end, granularity)
        except views.TooManyPeriods as error:
            raise HttpError(400, str(error)) from None
        name = f"statement-{self.query['start']}-{self.query['end']}-{granularity}.csv"
        self._send(views.to_csv(rows).encode(), "text/csv; charset=utf-8",
                   extra={"Content-Disposition": f'attachment; filename="{name}"'})

    def events(self) -> None:
        """Server-sent events: `approvals` (the pending list, when it changes), `alerts`
        (new ones, as the broker streams them), `signed-out` (then the stream ends).
        Polling the stream does not keep an idle session alive."""
        session = self._session()
        self._headers(200, "text/event-stream", None, {"Cache-Control": "no-store"})
        self.close_connection = True
        alerts: queue.Queue = queue.Queue()
        stream = session.client.watch_alerts()
        threading.Thread(target=_pump, args=(stream, alerts), daemon=True).start()
        last, last_write = None, 0.0
        try:
            while not self.server.stopping.is_set():
                if self.server.sessions.get(self._session_id(), time.monotonic(),
                                            touch=False) is None:
                    self._event("signed-out", {})
                    return
                try:
                    pending = views.approvals(session.client)
                except BrokerClientError as error:
                    self._event("error", {"error": _details(error), "reason": error.reason})
                    return
                if pending != last:
                    self._event("approvals", {"approvals": pending})
                    last, last_write = pending, time.monotonic()
                try:
                    new = alerts.get(timeout=LIVE_POLL_S)
                    if new is None:
                        return  # the broker ended the stream: the page reconnects
                    self._event("alerts", {"alerts": new})
                    last_write = time.monotonic()
                except queue.Empty:
                    if time.monotonic() - last_write > KEEPALIVE_S:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        last_write = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the page went away
        finally:
            stream.cancel()

    def _event(self, name: str, data) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


GET_ROUTES = {
    "/": Handler.index,
    "/api/session": Handler.get_session,
    "/api/overview": Handler.overview,
    "/api/spend": Handler.spend,
    "/api/approvals": Handler.approvals,
    "/api/alerts": Handler.alerts,
    "/api/receipts": Handler.receipts,
    "/api/receipt": Handler.receipt,
    "/api/receipt-key": Handler.receipt_key,
    "/api/statement.csv": Handler.statement_csv,
    "/api/events": Handler.events,
}
POST_ROUTES = {
    "/api/session": Handler.sign_in,
    "/api/session/end": Handler.sign_out,
    "/api/approvals/approve": lambda h: h.decide(True),
    "/api/approvals/deny": lambda h: h.decide(False),
    "/api/wallets/freeze": lambda h: h.set_frozen(True),
    "/api/wallets/unfreeze": lambda h: h.set_frozen(False),
    "/api/receipt-key": Handler.register_receipt_key,
}


def _pump(stream, out: queue.Queue) -> None:
    """WatchAlerts messages into the event loop's queue; None when the stream ends."""
    try:
        for message in stream:
            if message.alerts:
                out.put([views.as_json(a) for a in message.alerts])
    except grpc.RpcError:
        pass
    out.put(None)


def _details(error: BrokerClientError) -> str:
    return str(error).split(": ", 1)[-1]


def _text(body: dict, name: str, *, required: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise HttpError(400, f"{name} is required")
    return value.strip()


def _day(text: str) -> int:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise HttpError(400, "dates are YYYY-MM-DD") from None
    return int(day.timestamp()) * 1000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def ssl_context(settings: ConsoleSettings) -> ssl.SSLContext | None:
    """HTTPS from the same kind of PEM files as the broker's (checked the same way)."""
    if tls.load_server(settings.tls_cert, settings.tls_key, settings.tls_client_ca) is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.tls_client_ca)
    return context


def broker_channel(settings: ConsoleSettings) -> grpc.Channel:
    client_tls = tls.load_client(settings.broker_ca, settings.broker_client_cert,
                                 settings.broker_client_key)
    return tls.broker_channel(settings.broker, client_tls, order=settings.broker_order)
