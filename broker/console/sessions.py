"""Signed-in sessions: a random id (the HttpOnly cookie) maps to the API key, the CSRF
token and the times that end it. Kept in memory only: a restart signs everyone out."""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass, field

from .broker_calls import ConsoleClient
from .views import Identity


@dataclass
class Session:
    client: ConsoleClient = field(repr=False)  # holds the API key; never logged
    identity: Identity
    csrf_token: str = field(repr=False)
    start_s: float
    seen_s: float

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self.csrf_token.encode())


class Sessions:
    def __init__(self, idle_s: float, max_s: float):
        self._idle_s, self._max_s = idle_s, max_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, client: ConsoleClient, identity: Identity, now_s: float) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._drop_expired(now_s)
            self._by_id[session_id] = Session(client, identity, secrets.token_urlsafe(32),
                                              now_s, now_s)
        return session_id

    def get(self, session_id: str | None, now_s: float, *, touch: bool = True
            ) -> Session | None:
        """The live session (`touch`: its idle clock restarted); None when unknown or
        expired."""
        if not session_id:
            return None
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if self._expired(session, now_s):
                del self._by_id[session_id]
                return None
            if touch:
                session.seen_s = now_s
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)

    def _expired(self, session: Session, now_s: float) -> bool:
        return (now_s - session.seen_s > self._idle_s
                or now_s - session.start_s > self._max_s)

    def _drop_expired(self, now_s: float) -> None:
        for session_id in [i for i, s in self._by_id.items() if self._expired(s, now_s)]:
            del self._by_id[session_id]
