"""Change signals between the brokers on one PostgreSQL database: LISTEN/NOTIFY.

A transaction that writes a table some watcher reads (`PgStore.listen`'s tables: the
approvals and alerts that WatchAuthorization and WatchAlerts wait on) sends
`NOTIFY broker_changes` in the pipeline of its COMMIT: PostgreSQL delivers it when, and
only if, the transaction commits, at no extra round trip. Each broker holds one
connection that LISTENs, on a thread of its own (`Listener`), and tells its event loop
of every notification (`on_change`), so a watcher on any broker wakes within
milliseconds of a change committed through another.

When that connection is lost, the listener connects again with back-off and, once it
listens again, calls `on_change` once: what was sent in between reached nobody here.
The watchers' own poll (broker/api/watch.py) stays the fallback meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger("broker.store")

CHANNEL = "broker_changes"
NOTIFY = f"NOTIFY {CHANNEL}"
WAIT_S = 0.25  # the longest the listener waits before looking whether it should stop
PING_S = 10.0  # an idle connection is checked this often (a peer that vanished)
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0
CONNECT_TIMEOUT_S = 5


class Listener:
    """One LISTEN connection and the thread that reads it (see the module docstring)."""

    def __init__(self, url: str, name: str, on_change: Callable[[], None]) -> None:
        self._url, self._name = url, name  # name: the masked URL, for logs
        self._on_change = on_change
        self._stopping = threading.Event()
        self.listening = threading.Event()  # set while the connection listens
        self.received = 0  # notifications received (tests, metrics)
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _fire(self) -> None:
        try:
            self._on_change()
        except Exception:  # a broken callback must not end the listener
            log.exception("change signal callback failed")

    def _run(self) -> None:
        delay, failing = RECONNECT_MIN_S, False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True,
                                     connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.info("listening for other brokers' changes again at %s",
                                 self._name)
                    delay, failing = RECONNECT_MIN_S, False
                    self._fire()  # whatever was sent while nobody here listened
                    self._listen(conn)
            except psycopg.Error as error:
                self.listening.clear()
                if not failing:
                    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    log.warning("lost the connection that listens for other brokers' "
                                "changes at %s (%s); watch streams poll until it is back",
                                self._name, first)
                failing = True
            self.listening.clear()
            self._stopping.wait(delay)
            delay = min(RECONNECT_MAX_S, delay * 2)

    def _listen(self, conn: psycopg.Connection) -> None:
        idle = 0.0
        while not self._stopping.is_set():
            got = 0
            for _ in conn.notifies(timeout=WAIT_S):
                got += 1
                self.received += 1
                self._fire()
            idle = 0.0 if got else idle + WAIT_S
            if idle >= PING_S:  # nothing for a while: is the server still there?
                conn.execute("SELECT 1")
                idle = 0.0
