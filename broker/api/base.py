"""What every servicer shares: the store, keys, settings, auth and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from common.clock import now_ms
from common.errors import BrokerError, Code
from common.status import to_status

from ..core import access, idempotency, rate_limits
from ..core.access import Principal
from ..core.config import CoreConfig
from ..core.registry import Liveness
from ..keyring import Keyring
from ..store.base import Record, Store, Tx
from .watch import Changes

log = logging.getLogger("broker.api")


def shutting_down() -> BrokerError:
    return BrokerError(Code.UNAVAILABLE, "SHUTTING_DOWN",
                       "the broker is shutting down; retry on another broker or later",
                       retry_after_ms=1000)


class MeteringStreams:
    """The open metering streams, for a graceful shutdown: the broker waits up to its
    grace period for them to end, then sets `ended` and the rest end with SHUTTING_DOWN
    (their sessions stay open, for the worker to resume)."""

    def __init__(self) -> None:
        self.count = 0
        self.ended = asyncio.Event()
        # Set when the drain starts: a worker's stream with no session in progress ends.
        self.draining = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no stream is open; False if some still are after `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


@dataclass
class Services:
    store: Store
    keyring: Keyring
    config: CoreConfig
    liveness: Liveness
    # HMAC key that turns owner ids into opaque result-cache scopes.
    cache_secret: bytes = b""
    # Signs receipts and statements (separate from the voucher keys in `keyring`).
    receipt_keyring: Keyring | None = None
    clock: Callable[[], int] = now_ms
    # Set on shutdown: new authorizations and sessions are refused with UNAVAILABLE.
    draining: bool = False
    streams: MeteringStreams = field(default_factory=MeteringStreams)
    # Spend controls: request rate per agent key (in memory), and watch stream wake-ups.
    limiter: rate_limits.RequestLimiter = field(default_factory=rate_limits.RequestLimiter)
    changes: Changes = field(default_factory=Changes)

    def memory_tables(self) -> dict[str, tuple[int, int | None]]:
        """What this process keeps in memory per caller or per worker: name -> (entries,
        limit or None when bounded otherwise; docs/reliability.md, "Memory")."""
        return {"rate_buckets": (self.limiter.size, rate_limits.MAX_BUCKETS),
                "worker_leases": (self.liveness.size, None),
                "watch_streams": (self.changes.watches, self.changes.max_watches),
                "metering_streams": (self.streams.count, None)}

    def authenticate(self, context: grpc.aio.ServicerContext, *roles: str) -> Principal:
        secret = _bearer(context.invocation_metadata() or ())

        def check(tx: Tx) -> tuple[Principal, rate_limits.RequestRate | None]:
            principal = access.authenticate(tx, secret)
            access.require_role(principal, *roles)
            return principal, rate_limits.request_rate(tx, principal)  # one snapshot

        principal, rate = self.store.read(check)
        self.limiter.admit(principal.key_id, rate, self.clock())
        return principal

    def reauthenticate(self, principal: Principal) -> None:
        """Check again, during a long call, that `authenticate`'s key is still good."""
        self.store.read(lambda tx: access.require_active(tx, principal))

    async def mutate(self, principal: Principal, method: str, request: Message,
                     op: Callable[[Tx, int], Record]) -> Record:
        """Run `op(tx, now)` durably, once per request_id (AIP-155)."""
        return await self.store.submit(self.mutation(principal, method, request, op))

    def mutation(self, principal: Principal, method: str, request: Message,
                 op: Callable[[Tx, int], Record]) -> Callable[[Tx], Record]:
        """`mutate`'s op, to submit along with others."""
        request_id = getattr(request, "request_id", "")
        fingerprint = _fingerprint(request)
        scope = f"{principal.idempotency_scope}/{method}"

        def run(tx: Tx) -> Record:
            now = self.clock()
            return idempotency.run(tx, scope, request_id, fingerprint, now, lambda: op(tx, now))

        return run

    def refuse_when_draining(self) -> None:
        if self.draining:
            raise shutting_down()


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _fingerprint(request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def unary(method: Callable) -> Callable:
    """Map BrokerError to a status with ErrorInfo; never leak internals as UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except BrokerError as error:
            await context.abort_with_status(to_status(error))
        except Exception:
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


def streaming(method: Callable) -> Callable:
    """`unary` for server streams: BrokerError -> status, never INTERNAL details."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for response in method(self, request, context):
                yield response
        except BrokerError as error:
            await context.abort_with_status(to_status(error))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper
