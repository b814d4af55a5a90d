"""What every servicer shares: the store, keys, settings, auth and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import grpc
from google.protobuf.message import Message

from common.clock import now_ms
from common.errors import BrokerError, Code
from common.status import to_status

from ..core import access, idempotency, rate_limits
from ..core.access import Principal
from ..core.auth_throttle import FailedAuthThrottle
from ..core.config import CoreConfig
from ..core.registry import Liveness
from ..keyring import Keyring
from ..store.base import Record, StorageFull, Store, Tx
from .crypto_threads import CryptoThreads
from .watch import Changes

log = logging.getLogger("broker.api")

T = TypeVar("T")
V = TypeVar("V")


def storage_full() -> BrokerError:
    return BrokerError(Code.UNAVAILABLE, "STORAGE_FULL",
                       "the broker cannot write its ledger: its storage is full; nothing "
                       "was changed, retry later with the same request_id",
                       retry_after_ms=5000)


def shutting_down() -> BrokerError:
    return BrokerError(Code.UNAVAILABLE, "SHUTTING_DOWN",
                       "the broker is shutting down; retry on another broker or later",
                       retry_after_ms=1000)


@dataclass(frozen=True)
class Limits:
    """What one caller may hold of the broker without paying for it (the settings
    `limits.*`; docs/operations.md)."""

    meter_first_message_ms: int = 10_000
    meter_key_streams: int = 1_000
    meter_streams_total: int = 10_000
    auth_failures_per_minute: int = 60
    auth_failure_burst: int = 30


def too_many_streams(scope: str, limit: int) -> BrokerError:
    return BrokerError(Code.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS",
                       f"too many metering streams open ({scope}: at most {limit}); finish "
                       "or resume an open one, or retry later", {"limit": str(limit)},
                       retry_after_ms=1000,
                       quota_violations=[(f"metering_streams/{scope}", f"at most {limit}")])


class MeteringStreams:
    """The open metering streams: capped per worker key and in all, and, for a graceful
    shutdown, waited for: the broker waits up to its grace period for them to end, then
    sets `ended` and the rest end with SHUTTING_DOWN (their sessions stay open, for the
    worker to resume)."""

    def __init__(self, per_key: int = Limits.meter_key_streams,
                 total: int = Limits.meter_streams_total) -> None:
        self.count = 0
        self.per_key = per_key
        self.total = total
        self._by_key: dict[str, int] = {}  # only keys with a stream open: bounded by count
        self.ended = asyncio.Event()
        # Set when the drain starts: a worker's stream with no session in progress ends.
        self.draining = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._reading: set[asyncio.Task] = set()  # streams waiting for their next message

    def open_stream(self, key_id: str) -> None:
        """One more stream of `key_id` (TOO_MANY_STREAMS beyond the caps); `release` it."""
        if self.count >= self.total:
            raise too_many_streams("all keys", self.total)
        open_for_key = self._by_key.get(key_id, 0)
        if open_for_key >= self.per_key:
            raise too_many_streams("this key", self.per_key)
        self._by_key[key_id] = open_for_key + 1
        self.count += 1
        self._idle.clear()

    def release(self, key_id: str) -> None:
        self.count -= 1
        if self._by_key[key_id] == 1:
            del self._by_key[key_id]
        else:
            self._by_key[key_id] -= 1
        if not self.count:
            self._idle.set()

    def end(self) -> None:
        """The grace period is over: streams waiting for their next message end now with
        SHUTTING_DOWN, the others when they next wait for one."""
        self.ended.set()
        for task in self._reading:
            task.cancel()

    async def read(self, requests: AsyncIterator[Any]) -> Any:
        """A stream's next message (None at its end), or SHUTTING_DOWN once `end` was
        called. Why not race each read against `ended`: that costs two tasks and an
        asyncio.wait per message; this costs a set insertion."""
        if self.ended.is_set():
            raise shutting_down()
        task = asyncio.current_task()
        assert task is not None
        self._reading.add(task)
        try:
            return await anext(requests, None)
        except asyncio.CancelledError:
            if not self.ended.is_set():
                raise
            task.uncancel()  # cancelled by `end`: the stream ends with a status instead
            raise shutting_down() from None
        finally:
            self._reading.discard(task)

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
    limits: Limits = field(default_factory=Limits)
    # Both made from `limits`. Failed authentications: per peer address, in memory, per
    # server process.
    streams: MeteringStreams = field(init=False)
    auth_failures: FailedAuthThrottle = field(init=False)
    # Spend controls: request rate per agent key (in memory), and watch stream wake-ups.
    limiter: rate_limits.RequestLimiter = field(default_factory=rate_limits.RequestLimiter)
    changes: Changes = field(default_factory=Changes)
    # Voucher signatures and usage-report checks, outside the GIL the loop and the
    # writer share (crypto_threads.py).
    crypto: CryptoThreads = field(default_factory=CryptoThreads)
    # The store's `off_loop` where its reads are network round trips (PgStore), else
    # None: LMDB's and the memory store's reads are local and fast, and run inline (a
    # thread hop per read would cost more than the read; docs/performance.md).
    _off_loop: Callable[[Callable[[], Any]], Awaitable[Any]] | None = field(
        init=False, default=None)

    def __post_init__(self) -> None:
        self._off_loop = getattr(self.store, "off_loop", None)
        limits = self.limits
        self.streams = MeteringStreams(limits.meter_key_streams, limits.meter_streams_total)
        self.auth_failures = FailedAuthThrottle(limits.auth_failures_per_minute,
                                                limits.auth_failure_burst)

    def memory_tables(self) -> dict[str, tuple[int, int | None]]:
        """What this process keeps in memory per caller or per worker: name -> (entries,
        limit or None when bounded otherwise; docs/reliability.md, "Memory")."""
        return {"rate_buckets": (self.limiter.size, rate_limits.MAX_BUCKETS),
                "worker_leases": (self.liveness.size, None),
                "watch_streams": (self.changes.watches, self.changes.max_watches),
                "metering_streams": (self.streams.count, None)}

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """`store.read(fn)`, the API's only way to read: inline on LMDB and in memory,
        off the event loop where a read is a round trip to a database (PostgreSQL), so
        that a slow or distant database never stalls the other calls."""
        if self._off_loop is None:
            return self.store.read(fn)
        store = self.store
        return await self._off_loop(lambda: store.read(fn))

    async def _runtime(self, remote: bool, call: Callable[[], T]) -> T:
        """`call()` on a runtime table (worker leases, rate buckets): inline when they are
        in memory or in the prefork processes' LMDB tables, off the loop when they are in
        the database (`remote`)."""
        if not remote:
            return call()
        return await (self._off_loop or asyncio.to_thread)(call)

    async def authenticate(self, context: grpc.aio.ServicerContext, *roles: str) -> Principal:
        """The caller's principal, with one of `roles`, admitted by its request rate. On
        PostgreSQL the key's read and the rate bucket's statement share one hop off
        the loop."""
        secret = _bearer(context.invocation_metadata() or ())
        limiter, clock = self.limiter, self.clock

        def check(tx: Tx) -> tuple[Principal, rate_limits.RequestRate | None]:
            principal = access.authenticate(tx, secret)
            access.require_role(principal, *roles)
            return principal, rate_limits.request_rate(tx, principal)  # one snapshot

        def throttled(refused: BrokerError) -> BrokerError:
            # (Above `check_and_admit`: docs/errors.md lists reasons in source order.)
            return self.auth_failures.failed(peer_address(context.peer()), refused, clock())

        def check_and_admit() -> Principal:
            principal, rate = self.store.read(check)
            limiter.admit(principal.key_id, rate, clock())
            return principal

        try:
            if self._off_loop is not None and limiter.remote:
                return await self._off_loop(check_and_admit)
            principal, rate = await self.read(check)
        except BrokerError as error:
            if error.reason in access.KEY_REFUSALS:
                raise throttled(error) from None
            raise
        await self._runtime(limiter.remote, lambda: limiter.admit(principal.key_id, rate,
                                                                  clock()))
        return principal

    async def reauthenticate(self, principal: Principal) -> None:
        """Check again, during a long call, that `authenticate`'s key is still good."""
        await self.read(lambda tx: access.require_active(tx, principal))

    async def beat(self, worker_id: str) -> int:
        """`liveness.beat` (a heartbeat): its lease's end."""
        liveness, now = self.liveness, self.clock()
        return await self._runtime(liveness.remote, lambda: liveness.beat(worker_id, now))

    async def drop(self, worker_id: str) -> None:
        """`liveness.drop` (the worker deregistered)."""
        liveness = self.liveness
        await self._runtime(liveness.remote, lambda: liveness.drop(worker_id))

    async def live_ids(self) -> list[str]:
        """`liveness.live_ids` now: the workers whose lease runs."""
        liveness, now = self.liveness, self.clock()
        return await self._runtime(liveness.remote, lambda: liveness.live_ids(now))

    @overload
    async def mutate(self, principal: Principal, method: str, request: Message,
                     op: Callable[[Tx, int], Record]) -> Record: ...

    @overload
    async def mutate(self, principal: Principal, method: str, request: Message,
                     op: Callable[[Tx, int], Record], *,
                     then: Callable[[Record], T]) -> tuple[Record, T]: ...

    async def mutate(self, principal: Principal, method: str, request: Message,
                     op: Callable[[Tx, int], Record], *,
                     then: Callable[[Record], Any] | None = None) -> Any:
        """Run `op(tx, now)` durably, once per request_id (AIP-155). `then(its record)`,
        if given, runs right after it in the writer, outside what a retry replays (the
        Authorize voucher's signature); the result is then (record, what `then` gave)."""
        run = self.mutation(principal, method, request, op)
        if then is not None:
            mutation = run

            def run(tx: Tx) -> Any:
                record = mutation(tx)
                return record, then(record)

        return await self.submit(run)

    async def submit(self, op: Callable[[Tx], Any]) -> Any:
        """`store.submit(op)`, a full store refused with STORAGE_FULL (the unary and
        streaming wrappers catch the other writes)."""
        try:
            return await self.store.submit(op)
        except StorageFull:
            raise storage_full() from None

    async def submit_checked(self, check: Callable[[], V],
                             op: Callable[[V], Callable[[Tx], T]], key: Hashable) -> T:
        """`check()` on a crypto thread (a signature), then `op(its result)` in the
        store's writer; the result of the op. With a store that takes ops from other
        threads (LmdbStore.enqueue) the crypto thread hands the op to the writer itself,
        and the caller's loop wakes once instead of twice. Ops submitted with the same
        `key` (a session) reach the writer in the order they were submitted."""
        enqueue = getattr(self.store, "enqueue", None)
        try:
            if enqueue is None:
                return await self.store.submit(op(await self.crypto.run(check, key)))
            return await self.crypto.run_then(
                check, lambda checked, loop, future: enqueue(op(checked), loop, future), key)
        except StorageFull:
            raise storage_full() from None

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


def peer_address(peer: str) -> str:
    """The address a call came from, without its port ("ipv4:10.0.0.1:5000" ->
    "10.0.0.1"); an IPv6 address stands for its /64, which one host usually owns
    whole. Anything else (a unix socket) is kept as it is."""
    kind, _, rest = urllib.parse.unquote(peer or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer or "unknown"
    host = rest.rpartition(":")[0].strip("[]")
    if kind == "ipv6":
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
    return host


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
        except StorageFull:
            await context.abort_with_status(to_status(storage_full()))
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
        except StorageFull:
            await context.abort_with_status(to_status(storage_full()))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper
