"""Start and stop the console's server (`broker console`)."""

from __future__ import annotations

import logging
import signal
import threading

from common import tls

from .server import Console, broker_channel, ssl_context
from .settings import ConsoleSettings

log = logging.getLogger("broker.console")


def run(settings: ConsoleSettings) -> int:
    """Serve until SIGINT or SIGTERM; exit status 2 when it cannot start."""
    try:
        context = ssl_context(settings)
        channel = broker_channel(settings)
    except tls.TlsError as error:
        log.error("%s", error)
        return 2
    try:
        console = Console(settings, channel, context)
    except OSError as error:
        log.error("cannot listen on %s: %s", settings.listen, error.strerror or error)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=console.serve_forever, name="console", daemon=True).start()
    scheme = "https" if context is not None else "http"
    log.info("console on %s://%s (broker %s); sign in with an owner or auditor API key",
             scheme, settings.listen, settings.broker)
    stop.wait()
    console.stop()
    channel.close()
    return 0
