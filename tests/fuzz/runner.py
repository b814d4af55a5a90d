"""The fuzz driver: random requests for every RPC against a real broker process and a
real worker process, with the demo credentials.

    python -m tests.fuzz.runner --inputs 20000 [--seed N] [--report violations.json]

Every RPC that the descriptors of broker.v1 and worker.v1 declare is called (unary
calls, the bidirectional MeteringService.Meter stream with sequences of random
MeterRequest messages, the WorkerService.Execute server stream), with no key, a
garbage key, or the key of each demo role (and keys the fuzz created). Checks:

- status: never INTERNAL or UNKNOWN (nor a hang: DEADLINE_EXCEEDED);
- size: a request above the server's limit (64 KiB for the broker) is refused with
  RESOURCE_EXHAUSTED;
- state: a rejected call changes nothing. The checksum is AdminService.GetLedgerSummary
  (transfer and journal counts, pending and posted sums, account count); it is taken
  before and after every call that could change state (a mutating method with a key
  that its role checks have not refused yet, every metering message, every job), and
  read-only or auth-refused calls are verified in batches (the counts only grow, so an
  unchanged checksum over a batch means no call in it changed anything);
- auth: a mutating call with a key its role checks refused before is never accepted;
- reason: a refusal's ErrorInfo reason is one docs/errors.md lists for that RPC;
- crash: both processes alive and healthy (grpc.health.v1, the ledger audit), checked
  every few hundred inputs and at the end.

Soundness: holds are created with a long time to live only (the broker's expiry sweep
would otherwise change the ledger on its own), a world (broker + worker) is replaced
well before the shortest hold can expire, and a job whose stream ended early is waited
for until it settled. The process exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import queue
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nacl.signing import SigningKey

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import policy_service_pb2 as policy_pb
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from common import usage_signing
from common.status import error_info
from tests.integration.broker_process import BrokerProcess
from tests.integration.worker_process import WorkerProcess

from .generator import Corpus, Generator, Rpc, discover_rpcs


def documented_reasons() -> dict[str, set[str]]:
    """RPC -> the reasons docs/errors.md lists for it (scripts/gen_error_docs.py)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "gen_error_docs.py"
    spec = importlib.util.spec_from_file_location("gen_error_docs", path)
    gen = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    table = {rpc.name: rpc for rpc in gen.rpcs()}
    return {name: gen.may_return(name, table) for name in table}

StatusCode = grpc.StatusCode
OK = StatusCode.OK
METER_WORKER = "broker.v1.MeteringService.MeterWorker"
SUMMARY_FIELDS = ("transfer_count", "journal_length", "debits_pending", "credits_pending",
                  "debits_posted", "credits_posted", "account_count")
AUTH_REFUSALS = {"API_KEY_MISSING", "API_KEY_INVALID", "API_KEY_REVOKED", "ROLE_NOT_ALLOWED"}
# A revoked key's call from an address that made too many failed authentications (the
# fuzz sends thousands of garbage keys) is refused with this instead of API_KEY_REVOKED.
THROTTLED_REFUSALS = AUTH_REFUSALS | {"AUTH_THROTTLED"}
# Holds live at least this long, and a world is replaced before the shortest can expire
# (an Authorize with ttl_seconds 0 gets the broker's default, 600 s).
MIN_TTL_S = 900
MAX_WORLD_AGE_S = 420
# GetLedgerSummary replays every transfer and re-hashes the journal; a fresh world keeps
# the checksum cheap (about 2 ms + 20 us per journal entry).
MAX_WORLD_JOURNAL = 500
CALL_TIMEOUT_S = 20
# Two reporting intervals (1 s each) after a kill-switch STOP, plus sweeps (0.5 s) and slack.
KILL_SETTLE_S = 3.5
# Then the ledger must not change for this long (more than the 0.5 s sweep interval),
# waiting at most KILL_SETTLE_MAX_S in all.
QUIET_S = 1.2
KILL_SETTLE_MAX_S = 15
JOB_TIMEOUT_S = 60
# A broker watch stream lives until the client leaves: read what comes this long. Its
# first answer (or its error) comes at once, so ending with nothing at all is a hang.
WATCH_S = 1.5
HEALTH_EVERY = 400
PREFERRED_ROLES = {
    "broker.v1.AdminService": ("admin",),
    "broker.v1.AuthorizationService": ("agent", "agent", "owner"),
    "broker.v1.WalletService": ("owner", "owner", "agent"),
    "broker.v1.WorkerRegistryService": ("worker", "worker", "agent"),
    "broker.v1.MeteringService": ("worker",),
    "broker.v1.PricingService": ("agent", "agent", "owner"),
    "broker.v1.VoucherKeyService": ("none",),
    "broker.v1.PolicyService": ("owner", "owner", "admin", "agent"),
    "worker.v1.WorkerService": ("none",),
}


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


@dataclass
class Outcome:
    code: StatusCode
    reason: str = ""
    details: str = ""
    response: Message | None = None

    @property
    def ok(self) -> bool:
        return self.code == OK

    @staticmethod
    def of(error: grpc.RpcError) -> Outcome:
        try:
            info = error_info(error)
        except Exception:  # a status whose details do not parse is a finding of its own
            info = None
        return Outcome(error.code(), info.reason if info else "", error.details() or "")


@dataclass
class Violation:
    kind: str  # status | size | state | auth | reason | crash | health | hang
    method: str
    key: str
    detail: str
    input: str


@dataclass
class Stats:
    inputs: int = 0
    messages: int = 0
    accepted: int = 0
    rejected: int = 0
    summaries: int = 0
    worlds: int = 0
    setup_calls: int = 0
    per_method: Counter = field(default_factory=Counter)
    accepted_by_method: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)


def short_repr(msg: Message | bytes, limit: int = 600) -> str:
    """A readable one-line input with long strings and bytes cut."""
    if isinstance(msg, bytes):
        text = msg[:120].hex() + (f"...(+{len(msg) - 120} bytes)" if len(msg) > 120 else "")
        return f"raw[{len(msg)}]: {text}"
    copy = type(msg)()
    copy.CopyFrom(msg)
    _cut(copy)
    text = text_format.MessageToString(copy, as_one_line=True, as_utf8=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _cut(msg: Message) -> None:
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
            for key in [k for k, v in value.items() if isinstance(v, str) and len(v) > 80]:
                value[key] = f"{value[key][:40]}...(+{len(value[key]) - 40})"
        elif fd.type == fd.TYPE_MESSAGE:
            for item in (value if _is_repeated(fd) else [value]):
                _cut(item)
        elif fd.type == fd.TYPE_STRING and not _is_repeated(fd) and len(value) > 80:
            setattr(msg, fd.name, f"{value[:40]}...(+{len(value) - 40})")
        elif fd.type == fd.TYPE_BYTES and not _is_repeated(fd) and len(value) > 80:
            setattr(msg, fd.name, value[:40] + f"...(+{len(value) - 40})".encode())


def _is_repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


# -- a broker and a worker --------------------------------------------------------------


class World:
    """A broker (demo data) and a worker daemon on fresh directories, channels to both,
    a second worker registration that only the fuzz uses for metering streams (with its
    own usage key), and a third one that register/deregister calls may play with."""

    def __init__(self, root: Path, index: int):
        self.dir = root / f"world{index}"
        self.dir.mkdir(parents=True)
        self.started = time.monotonic()
        self.broker = BrokerProcess(self.dir / "broker").start()
        self.creds = self.broker.credentials
        self.worker = WorkerProcess(self.broker.target, self.dir / "worker",
                                    self.creds["worker_api_key"], self.creds["agent_api_key"])
        try:
            self.worker.start()
        except BaseException:
            self.broker.stop()
            raise
        self.broker_channel = grpc.insecure_channel(self.broker.target)
        self.worker_channel = grpc.insecure_channel(self.worker.target)
        self._callables: dict[tuple, Any] = {}
        self.usage_key = SigningKey.generate()
        self.fuzz_worker_id = ""
        self.victim_worker_id = ""
        self.caps = self.worker.capabilities()

    @property
    def age(self) -> float:
        return time.monotonic() - self.started

    def channel(self, rpc: Rpc) -> grpc.Channel:
        return self.worker_channel if rpc.target == "worker" else self.broker_channel

    def callable(self, rpc: Rpc):
        key = (rpc.path, rpc.client_streaming, rpc.server_streaming)
        fn = self._callables.get(key)
        if fn is None:
            channel = self.channel(rpc)
            kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                    (True, True): channel.stream_stream,
                    (True, False): channel.stream_unary}[(rpc.client_streaming,
                                                          rpc.server_streaming)]
            # Requests go as bytes (so broken encodings can be sent too).
            fn = kind(rpc.path, request_serializer=None,
                      response_deserializer=rpc.response_class().FromString)
            self._callables[key] = fn
        return fn

    def alive(self) -> bool:
        return self.broker.proc is not None and self.broker.proc.poll() is None \
            and self.worker.alive()

    def serving(self) -> list[str]:
        problems = []
        for name, channel, service in ((f"broker {self.broker.target}", self.broker_channel, ""),
                                       (f"worker {self.worker.target}", self.worker_channel,
                                        "worker.v1.WorkerService")):
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    problems.append(f"{name} is {reply.status}")
            except grpc.RpcError as error:
                problems.append(f"{name} health: {error.code()} {error.details()}")
        return problems

    def log_tails(self) -> str:
        return (f"--- broker log ---\n{self.broker.log()[-3000:]}\n"
                f"--- worker log ---\n{self.worker.log()[-3000:]}")

    def close(self) -> None:
        self.broker_channel.close()
        self.worker_channel.close()
        try:
            if self.worker.alive():
                self.worker.stop(20)
        except Exception:
            self.worker.kill()
        self.broker.stop()


# -- the metering stream, one message at a time -------------------------------------------


class StreamDriver:
    """A bidirectional call driven in lockstep: send one message, read its answer."""

    _END = object()

    def __init__(self, fn, metadata: tuple, timeout: float):
        self._queue: queue.Queue = queue.Queue()
        self.call = fn(self._requests(), metadata=metadata, timeout=timeout)
        # Stopped by the kill switch: the broker settles the session on its own if the
        # stream does not finish it (see broker/core/killswitch.py).
        self.killed = False

    def _requests(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            yield item

    def send(self, payload: bytes) -> None:
        self._queue.put(payload)

    def half_close(self) -> None:
        self._queue.put(self._END)

    def read(self, skip_stops: bool = True) -> meter_pb.MeterResponse | None:
        """The next answer (None when the stream ended cleanly); raises grpc.RpcError."""
        while True:
            try:
                response = next(self.call)
            except StopIteration:
                return None
            kind = response.WhichOneof("kind")
            if (kind == "stop" and response.stop.reason == meter_pb.STOP_REASON_REVOKED) or (
                    kind == "grant" and response.grant.stopped):
                self.killed = True
            if not (skip_stops and kind == "stop"):
                return response

    def cancel(self) -> None:
        self.call.cancel()
        self._queue.put(self._END)


# -- the fuzzer ---------------------------------------------------------------------------


class Fuzzer:
    def __init__(self, *, seed: int, inputs: int, max_seconds: float | None = None,
                 verbose: bool = False, root: Path | None = None):
        self.rng = random.Random(seed)
        self.seed = seed
        self.target_inputs = inputs
        self.max_seconds = max_seconds
        self.verbose = verbose
        self.rpcs = discover_rpcs()
        self.by_name = {rpc.full_name: rpc for rpc in self.rpcs}
        self.reasons = documented_reasons()
        self.stats = Stats()
        self.violations: list[Violation] = []
        self.root = root
        self.world: World | None = None
        # Per world:
        self.corpus = Corpus(self.rng)
        self.gen = Generator(self.rng, self.corpus)
        self.keys: dict[str, tuple] = {}
        self.denied: set[tuple[str, str]] = set()
        self.cached: tuple | None = None
        self.unverified: list[str] = []
        self.held: dict[str, str] = {}  # authorization id -> voucher (ours, maybe unredeemed)
        self.voucher_auth: dict[str, str] = {}  # voucher -> authorization id
        # Accepted mutating requests with a request_id: (rpc, request, key label, metadata).
        self.replayable: deque = deque(maxlen=50)
        self.fresh: list[tuple[str, str, str]] = []  # (voucher, authorization id, pinned worker)
        self.open_sessions: dict[str, dict] = {}  # fuzz worker's: session id -> last usage
        self.audit_reported = False
        self.broken = False
        self._last_journal = 0

    # -- world lifecycle ------------------------------------------------------------------

    def new_world(self) -> None:
        if self.world is not None:
            self.world.close()
        self.stats.worlds += 1
        self.world = w = World(self.root, self.stats.worlds)
        self.corpus = Corpus(self.rng)
        self.gen = Generator(self.rng, self.corpus)
        self.denied, self.held, self.fresh, self.open_sessions = set(), {}, [], {}
        self.voucher_auth = {}
        self.replayable = deque(maxlen=50)
        self.cached, self.unverified, self.audit_reported = None, [], False
        self.broken = False
        c = w.creds
        self.keys = {"none": (), **{role: bearer(c[f"{role}_api_key"])
                                    for role in ("admin", "owner", "agent", "worker")}}
        for name in ("owner_id", "wallet_id", "provider_id"):
            self.corpus.add(name, c[name], fixed=True)
        self.corpus.add("worker_id", w.worker.worker_id, fixed=True)
        self.corpus.add("resource_class", w.caps.capabilities.resource_class, fixed=True)
        w.fuzz_worker_id = self._register(w.usage_key.verify_key.encode())
        w.victim_worker_id = self._register(b"")
        self.corpus.add("worker_id", w.fuzz_worker_id, fixed=True)
        self.corpus.add("worker_id", w.victim_worker_id, fixed=True)
        keys = self.setup("broker.v1.VoucherKeyService.ListVoucherKeys",
                          keys_pb.ListVoucherKeysRequest(), "none")
        for key in keys.keys:
            self.corpus.add("key_id", key.key_id, fixed=True)
        for _ in range(3):
            self.new_voucher(pin=self.rng.choice(("", w.fuzz_worker_id, w.worker.worker_id)))

    def _register(self, usage_public_key: bytes) -> str:
        w = self.world
        caps = registry_pb.Capabilities(resource_class=w.caps.capabilities.resource_class,
                                        models=["tiny-lm"], meter="cpu_time")
        reply = self.setup("broker.v1.WorkerRegistryService.RegisterWorker",
                           registry_pb.RegisterWorkerRequest(
                               request_id=uuid.uuid4().hex, endpoint="127.0.0.1:7001",
                               capabilities=caps, prices=w.caps.prices,
                               usage_public_key=usage_public_key), "worker")
        return reply.worker_id

    def setup(self, method: str, request: Message, key: str, *, check: bool = True):
        """A call the fuzz needs (not an input): it must work, unless check is False."""
        rpc = self.by_name[method]
        self.stats.setup_calls += 1
        try:
            response = self.world.callable(rpc)(request.SerializeToString(),
                                                metadata=self.keys[key],
                                                timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            if check:
                raise RuntimeError(f"setup call {method} failed: {error.code()} "
                                   f"{error.details()}") from None
            return Outcome.of(error)
        if rpc.mutating:
            self.invalidate()
        self.corpus.harvest(response)
        return response

    # -- the ledger checksum ----------------------------------------------------------------

    def snapshot(self) -> tuple | None:
        self.stats.summaries += 1
        rpc = self.by_name["broker.v1.AdminService.GetLedgerSummary"]
        try:
            reply = self.world.callable(rpc)(admin_pb.GetLedgerSummaryRequest().SerializeToString(),
                                             metadata=self.keys["admin"], timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            self.violation("health", rpc.full_name, "admin", f"GetLedgerSummary failed: "
                           f"{error.code().name} {error.details()}", "")
            return None
        if reply.violations and not self.audit_reported:
            self.audit_reported = True
            self.violation("health", rpc.full_name, "admin",
                           f"ledger audit: {list(reply.violations)[:5]}", "")
        self._last_journal = reply.journal_length
        return tuple(getattr(reply, name) for name in SUMMARY_FIELDS)

    def invalidate(self) -> None:
        self.cached, self.unverified = None, []

    def verify_unchecked(self) -> tuple | None:
        now = self.snapshot()
        if self.cached is not None and self.unverified and now != self.cached:
            self.violation("state", self.unverified[-1], "",
                           f"the ledger changed ({_diff(self.cached, now)}) during calls that "
                           f"must not change it: {self.unverified[-8:]}", "")
        self.cached, self.unverified = now, []
        return now

    def before(self) -> tuple | None:
        if self.cached is not None and not self.unverified:
            return self.cached
        return self.verify_unchecked()

    def after_rejected(self, before: tuple | None, method: str, key: str, shown: str,
                       outcome: Outcome) -> None:
        """A call that must not have changed anything (refused, or a replay) has returned:
        compare the checksum with the one from before it."""
        now = self.snapshot()
        if before is not None and now is not None and now != before:
            what = "refused with" if not outcome.ok else "answered"
            self.violation("state", method, key,
                           f"{what} {outcome.code.name} {outcome.reason} but the ledger "
                           f"changed: {_diff(before, now)}", shown)
        self.cached, self.unverified = now, []

    # -- recording --------------------------------------------------------------------------

    def violation(self, kind: str, method: str, key: str, detail: str,
                  shown: str) -> Violation:
        found = Violation(kind, method, key, detail[:2000], shown)
        self.violations.append(found)
        if kind in ("crash", "health"):
            self.broken = True  # replace the world before the next input
        if self.verbose:
            print(f"VIOLATION {kind} {method} key={key}: {detail[:300]}\n  input: {shown}",
                  file=sys.stderr)
        return found

    def judge(self, rpc: Rpc, key: str, outcome: Outcome, size: int,
              shown_fn) -> Violation | None:
        """The status checks every answer gets; returns a status violation."""
        self.stats.codes[outcome.code.name] += 1
        found = None
        if outcome.code in (StatusCode.INTERNAL, StatusCode.UNKNOWN):
            found = self.violation("status", rpc.full_name, key,
                                   f"{outcome.code.name}: {outcome.details[:300]}", shown_fn())
        elif outcome.reason and outcome.reason not in self.reasons[rpc.full_name]:
            self.violation("reason", rpc.full_name, key, f"{outcome.code.name} "
                           f"{outcome.reason}, which docs/errors.md does not list for it",
                           shown_fn())
        elif outcome.code == StatusCode.DEADLINE_EXCEEDED:
            self.violation("hang", rpc.full_name, key, "no answer before the deadline",
                           shown_fn())
        elif outcome.code == StatusCode.UNAVAILABLE and not self.world.alive():
            self.violation("crash", rpc.full_name, key, "a process died\n"
                           + self.world.log_tails(), shown_fn())
        if size > rpc.max_message and outcome.code != StatusCode.RESOURCE_EXHAUSTED:
            self.violation("size", rpc.full_name, key,
                           f"{size} bytes > {rpc.max_message}: got {outcome.code.name} "
                           f"{outcome.details[:200]}", shown_fn())
        return found

    # -- keys -------------------------------------------------------------------------------

    def pick_key(self, rpc: Rpc) -> tuple[str, tuple]:
        rng = self.rng
        r = rng.random()
        if r < 0.07:
            return "none", ()
        if r < 0.15:
            return self._garbage_key()
        if r < 0.7:
            label = rng.choice(PREFERRED_ROLES.get(rpc.service, ("admin",)))
            return label, self.keys[label]
        label = rng.choice(sorted(self.keys))
        return label, self.keys[label]

    def _garbage_key(self) -> tuple[str, tuple]:
        rng = self.rng
        real = self.world.creds[f"{rng.choice(('admin', 'owner', 'agent', 'worker'))}_api_key"]
        variants = {
            "garbage:random": bearer("cbk_" + self.gen.fake_voucher()[:43]),
            "garbage:empty": (("authorization", "Bearer "),),
            "garbage:basic": (("authorization", "Basic " + real),),
            "garbage:noscheme": (("authorization", real),),
            "garbage:cut": bearer(real[:-1]),
            "garbage:long": bearer("cbk_" + "A" * 3000),
            "garbage:other-header": (("x-api-key", real),),
            "garbage:first-wins": (("authorization", "Bearer nope"),
                                   ("authorization", f"Bearer {real}")),
        }
        label = rng.choice(sorted(variants))
        return label, variants[label]

    def note_auth(self, rpc: Rpc, key: str, outcome: Outcome) -> None:
        if outcome.code in (StatusCode.UNAUTHENTICATED, StatusCode.PERMISSION_DENIED) and \
                outcome.reason in AUTH_REFUSALS and rpc.target == "broker":
            self.denied.add((key, rpc.full_name))

    # -- inputs -------------------------------------------------------------------------------

    def harden(self, rpc: Rpc, msg: Message) -> None:
        """Keep the fuzz sound and the world usable: no short-lived holds, and no
        re-registration of the workers the fuzz depends on."""
        fields = msg.DESCRIPTOR.fields_by_name
        if "ttl_seconds" in fields and 0 < msg.ttl_seconds < MIN_TTL_S:
            msg.ttl_seconds += MIN_TTL_S
        # Subscription periods and leases end by themselves too: not within a world's life.
        for name in ("period_seconds", "duration_seconds"):
            if name in fields and 0 < getattr(msg, name) < MIN_TTL_S:
                setattr(msg, name, getattr(msg, name) + MIN_TTL_S)
        if rpc.name in ("RegisterWorker", "DeregisterWorker") and msg.worker_id in (
                self.world.worker.worker_id, self.world.fuzz_worker_id):
            msg.worker_id = self.world.victim_worker_id

    def request(self, rpc: Rpc, **context: Any) -> Message:
        r = self.rng.random()
        if r < 0.35:
            msg = self.gen.message(rpc.input)
        elif r < 0.85:
            msg = self.gen.mutate(self.gen.template(rpc, **context))
        else:
            msg = self.gen.template(rpc, **context)
        self.harden(rpc, msg)
        return msg

    def encode(self, rpc: Rpc, msg: Message) -> tuple[bytes, str]:
        """The bytes to send (sometimes broken or oversized) and what they were."""
        payload = msg.SerializeToString()
        r = self.rng.random()
        if r < 0.03:
            return self.gen.corrupt_wire(payload), "wire"
        oversize = 0.01 if rpc.target == "broker" else 0.003
        if r < 0.03 + oversize:
            big = self.gen.big_string_request(msg, rpc.max_message)
            if big is not None and self.rng.random() < 0.5:
                self.harden(rpc, big)
                return big.SerializeToString(), "big"
            return self.gen.oversize(payload, rpc.max_message), "big"
        return payload, ""

    def count(self, rpc: Rpc, messages: int = 1) -> None:
        self.stats.inputs += 1
        self.stats.messages += messages
        self.stats.per_method[rpc.full_name] += 1

    def fuzz_unary(self, rpc: Rpc) -> None:
        if self.replayable and self.rng.random() < 0.04:
            self.fuzz_replay()
            return
        key, metadata = self.pick_key(rpc)
        msg = self.request(rpc)
        payload, how = self.encode(rpc, msg)
        shown = lambda: f"{how + ' ' if how else ''}{short_repr(msg)}" + (  # noqa: E731
            f" sent as {short_repr(payload)}" if how == "wire" else
            f" ({len(payload)} bytes)" if how else "")
        checked = rpc.mutating and (key, rpc.full_name) not in self.denied
        before = self.before() if checked else None
        outcome = self.send_unary(rpc, payload, metadata)
        self.count(rpc)
        status_violation = self.judge(rpc, key, outcome, len(payload), shown)
        self.note_auth(rpc, key, outcome)
        if outcome.ok:
            self.stats.accepted += 1
            self.stats.accepted_by_method[rpc.full_name] += 1
            self.corpus.harvest(outcome.response)
            self.learn(rpc, msg, outcome.response)
            if rpc.mutating:
                if not checked:
                    self.violation("auth", rpc.full_name, key,
                                   "accepted with a key that this method refused before",
                                   shown())
                self.invalidate()
                if rpc.name == "SetSpendPolicy" and key in self.keys:
                    # The wallet the broker set it for: a damaged encoding ("wire") may
                    # have reached the broker as another request than `msg`.
                    self.clear_policy(key, outcome.response.policy.wallet_id)
                if getattr(msg, "request_id", "") and not how:
                    self.replayable.append((rpc, msg, key, metadata))
            elif self.cached is not None:
                self.unverified.append(f"{rpc.name}[{key}]")
        else:
            self.stats.rejected += 1
            if checked:
                self.after_rejected(before, rpc.full_name, key, shown(), outcome)
            elif self.cached is not None:
                self.unverified.append(f"{rpc.name}[{key}]")
        if status_violation is not None and how != "wire":
            self.minimize(rpc, msg, metadata, outcome.code, status_violation)

    def clear_policy(self, key: str, wallet_id: str) -> None:
        """A spend policy changes what later calls may do (and may deny, alert, freeze or
        expire things in the background): remove it at once, so that every later input is
        judged against a world without one. The policy RPCs themselves are still fuzzed."""
        self.setup("broker.v1.PolicyService.SetSpendPolicy", policy_pb.SetSpendPolicyRequest(
            request_id=uuid.uuid4().hex, wallet_id=wallet_id, clear=True), key)

    def fuzz_watch(self, rpc: Rpc) -> None:
        """A broker watch stream (read-only): what comes within WATCH_S."""
        key, metadata = self.pick_key(rpc)
        msg = self.request(rpc)
        payload, how = self.encode(rpc, msg)
        shown = lambda: f"{how + ' ' if how else ''}{short_repr(msg)}"  # noqa: E731
        events: list = []
        outcome = Outcome(OK)
        try:
            for event in self.world.callable(rpc)(payload, metadata=metadata, timeout=WATCH_S):
                events.append(event)
        except grpc.RpcError as error:
            outcome = Outcome.of(error)
            if outcome.code == StatusCode.DEADLINE_EXCEEDED and events:
                outcome = Outcome(OK)  # still live after its first answers: as it should be
        self.count(rpc, max(1, len(events)))
        self.judge(rpc, key, outcome, len(payload), shown)
        self.note_auth(rpc, key, outcome)
        if outcome.ok:
            self.stats.accepted += 1
            self.stats.accepted_by_method[rpc.full_name] += 1
            for event in events:
                self.corpus.harvest(event)
        else:
            self.stats.rejected += 1
        if self.cached is not None:
            self.unverified.append(f"{rpc.name}[{key}]")

    def fuzz_replay(self) -> None:
        """An accepted mutating request again, same key and request_id (AIP-155): it must
        get an answer, not run again, and change nothing."""
        rpc, msg, key, metadata = self.rng.choice(self.replayable)
        shown = f"replay of {short_repr(msg)}"
        before = self.before()
        outcome = self.send_unary(rpc, msg.SerializeToString(), metadata)
        self.count(rpc)
        self.judge(rpc, key, outcome, 0, lambda: shown)
        if outcome.ok:
            self.stats.accepted += 1
            self.stats.accepted_by_method[f"{rpc.full_name}:replay"] += 1
        else:
            self.stats.rejected += 1
        if not outcome.ok and outcome.reason not in THROTTLED_REFUSALS:  # (the key was revoked)
            self.violation("replay", rpc.full_name, key, f"a retry of an accepted request got "
                           f"{outcome.code.name} {outcome.reason}: {outcome.details[:200]}",
                           shown)
        self.after_rejected(before, rpc.full_name, key, shown, outcome)

    def send_unary(self, rpc: Rpc, payload: bytes, metadata: tuple) -> Outcome:
        try:
            response = self.world.callable(rpc)(payload, metadata=metadata,
                                                timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return Outcome.of(error)
        return Outcome(OK, response=response)

    def learn(self, rpc: Rpc, msg: Message, response: Message) -> None:
        """Keep what deeper inputs need: new API keys, our holds and vouchers."""
        if rpc.name == "CreateApiKey" and response.api_key and len(self.keys) < 20:
            self.keys[f"new:{response.key_id}"] = bearer(response.api_key)
        if rpc.name == "Authorize":
            auth = response.authorization
            self.held[auth.authorization_id] = auth.voucher
            self.voucher_auth[auth.voucher] = auth.authorization_id
            left_s = auth.expire_time.ToMilliseconds() / 1000 - time.time()
            if left_s < MAX_WORLD_AGE_S + 60:  # a damaged encoding slipped a short ttl through
                self.setup("broker.v1.AuthorizationService.CancelAuthorization",
                           auth_pb.CancelAuthorizationRequest(
                               request_id=uuid.uuid4().hex,
                               authorization_id=auth.authorization_id), "owner", check=False)

    def minimize(self, rpc: Rpc, msg: Message, metadata: tuple, code: StatusCode,
                 found: Violation) -> None:
        """Shrink an input that got INTERNAL/UNKNOWN while it still does; report it."""
        best = type(msg)()
        best.CopyFrom(msg)
        tries = 0
        changed = True
        while changed and tries < 60:
            changed = False
            for fd, value in list(best.ListFields()):
                candidates = [None]
                if fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES) and not _is_repeated(fd) \
                        and len(value) > 1:
                    candidates.append(value[: len(value) // 2])
                for candidate in candidates:
                    trial = type(best)()
                    trial.CopyFrom(best)
                    if candidate is None:
                        trial.ClearField(fd.name)
                    else:
                        setattr(trial, fd.name, candidate)
                    tries += 1
                    if self.send_unary(rpc, trial.SerializeToString(), metadata).code == code:
                        best, changed = trial, True
                        break
                if changed or tries >= 60:
                    break
        self.invalidate()  # the retries may have been accepted
        found.input += f"\n    minimized: {short_repr(best)}"

    # -- metering streams ---------------------------------------------------------------

    def fuzz_meter(self, rpc: Rpc) -> None:
        rng = self.rng
        w = self.world
        key, metadata = self.pick_key(rpc)
        realistic = rng.random() < 0.6
        if realistic:
            key, metadata = ("worker", self.keys["worker"]) if rng.random() < 0.9 \
                else (key, metadata)
        plan = self._meter_plan(rpc, realistic)
        driver = StreamDriver(w.callable(rpc), metadata, CALL_TIMEOUT_S)
        sent = 0
        state: dict[str, Any] = {"session_id": "", "usage": None, "seq": 0}
        try:
            for step in plan:
                msg = step(state) if callable(step) else step
                if msg is None:
                    break
                payload, how = self.encode(rpc, msg)
                shown = f"message {sent + 1}: {how + ' ' if how else ''}{short_repr(msg)}"
                before = self.before()
                driver.send(payload)
                sent += 1
                try:
                    response = driver.read()
                except grpc.RpcError as error:
                    outcome = Outcome.of(error)
                    self.judge(rpc, key, outcome, len(payload), lambda s=shown: s)
                    self.stats.rejected += 1
                    self.after_rejected(before, rpc.full_name, key, shown, outcome)
                    return
                outcome = Outcome(OK, response=response)
                self.judge(rpc, key, outcome, len(payload), lambda s=shown: s)
                if response is None:  # ended cleanly without an answer
                    self.after_rejected(before, rpc.full_name, key, shown, outcome)
                    return
                self.stats.accepted += 1
                self.stats.accepted_by_method[f"{rpc.full_name}:{response.WhichOneof('kind')}"] += 1
                self.invalidate()
                self.corpus.harvest(response)
                kind = response.WhichOneof("kind")
                if kind == "grant":
                    grant = response.grant
                    state.update(session_id=grant.session_id, usage=grant.usage,
                                 seq=grant.last_seq)
                    if key == "worker" and grant.session_id:
                        self.open_sessions.setdefault(grant.session_id, {})
                elif kind == "ack" and msg.WhichOneof("kind") == "usage":
                    state.update(usage=msg.usage.usage, seq=msg.usage.seq)
                elif kind == "settled":
                    state["settled"] = True
                    self.open_sessions.pop(state["session_id"], None)
                    self.corpus.harvest(response.settled.receipt)
                    return
            if rng.random() < 0.2:
                driver.cancel()
            else:
                driver.half_close()
                try:
                    driver.read(skip_stops=True)
                except grpc.RpcError as error:
                    outcome = Outcome.of(error)
                    self.judge(rpc, key, outcome, 0, lambda: "half-close after "
                               f"{sent} messages")
        finally:
            driver.cancel()
            self.count(rpc, max(1, sent))
            if driver.killed and not state.get("settled"):
                self.wait_killed_settled()

    def _meter_plan(self, rpc: Rpc, realistic: bool) -> list:
        """The messages of one stream: fixed messages, or functions of the session so far
        (its id, last acknowledged usage and seq) that build the next one."""
        rng = self.rng
        gen = self.gen
        w = self.world
        if not realistic:
            return [self.request(rpc) for _ in range(rng.randint(1, 5))]
        r = rng.random()
        if r < 0.65:
            voucher, _, pin = self.take_voucher(meter=True)
            first = gen.template(rpc, kind="open", voucher=voucher,
                                 worker_id=w.fuzz_worker_id if rng.random() < 0.9
                                 else gen.corpus.pick("worker_id"))
            if pin not in ("", w.fuzz_worker_id) and rng.random() < 0.8:
                first.open.worker_id = pin
        elif r < 0.85 and self.open_sessions:
            first = gen.template(rpc, kind="resume",
                                 session_id=rng.choice(sorted(self.open_sessions)),
                                 worker_id=rng.choice(("", w.fuzz_worker_id)))
        else:
            first = self.request(rpc, kind=rng.choice(("open", "resume")))
        if rng.random() < 0.2:
            first = gen.mutate(first)
        plan: list = [first]

        def report(state: dict) -> Message:
            usage = _grow(rng, state["usage"])
            seq = state["seq"] + 1
            msg = meter_pb.MeterRequest(usage=meter_pb.UsageReport(seq=seq, usage=usage))
            msg.usage.signature = self._sign(state["session_id"], usage, seq=seq)
            return self._maybe_mutate(msg)

        def finish(state: dict) -> Message:
            usage = _grow(rng, state["usage"])
            msg = meter_pb.MeterRequest(finish=meter_pb.FinishSession(usage=usage))
            msg.finish.signature = self._sign(state["session_id"], usage, final=True)
            return self._maybe_mutate(msg)

        plan += [report] * rng.randint(0, 4)
        if rng.random() < 0.6:
            plan.append(finish)
        elif rng.random() < 0.3:
            plan.append(self.request(rpc))
        return plan

    # -- the worker's batched metering stream (MeterWorker) --------------------------------

    def fuzz_meter_worker(self, rpc: Rpc) -> None:
        """Up to four batches: opens, then reports and finishes (signed once per batch) of
        the sessions opened, each batch possibly mutated; or random batches. Every item's
        error must be a documented reason, and a batch whose items all failed must have
        changed nothing."""
        rng, w = self.rng, self.world
        key, metadata = self.pick_key(rpc)
        realistic = rng.random() < 0.7
        if realistic and rng.random() < 0.9:
            key, metadata = "worker", self.keys["worker"]
        driver = StreamDriver(w.callable(rpc), metadata, CALL_TIMEOUT_S)
        sessions: dict[str, tuple[int, Any]] = {}  # session id -> (last seq, usage)
        sent = 0
        try:
            for step in range(rng.randint(1, 4)):
                msg = self._worker_batch(rpc, sessions, step, realistic)
                payload, how = self.encode(rpc, msg)
                shown = f"batch {sent + 1}: {how + ' ' if how else ''}{short_repr(msg)}"
                before = self.before()
                driver.send(payload)
                sent += 1
                try:
                    response = next((r for r in driver.call if not r.early), None)
                except grpc.RpcError as error:
                    outcome = Outcome.of(error)
                    self.judge(rpc, key, outcome, len(payload), lambda s=shown: s)
                    self.stats.rejected += 1
                    self.after_rejected(before, rpc.full_name, key, shown, outcome)
                    return
                self.judge(rpc, key, Outcome(OK, response=response), len(payload),
                           lambda s=shown: s)
                if response is None:
                    return
                accepted = False
                for result in response.results:
                    kind = result.WhichOneof("kind")
                    if kind == "error":
                        error = result.error
                        code = next(c for c in StatusCode if c.value[0] == error.code)
                        reasons = [ErrorInfo.FromString(d.value).reason for d in error.details
                                   if d.Is(ErrorInfo.DESCRIPTOR)]
                        self.judge(rpc, key, Outcome(code, reasons[0] if reasons else "",
                                                     error.message), 0, lambda s=shown: s)
                        continue
                    accepted = True
                    self.corpus.harvest(result)
                    if kind == "grant":
                        sessions[result.session_id] = (result.grant.last_seq, result.grant.usage)
                        self.open_sessions.setdefault(result.session_id, {})
                    elif kind == "settled":
                        sessions.pop(result.session_id, None)
                        self.open_sessions.pop(result.session_id, None)
                    elif kind == "ack" and result.session_id in sessions:
                        report = next(r for r in msg.reports if r.session_id == result.session_id)
                        sessions[result.session_id] = (report.seq, report.usage)
                    # Stopped by the kill switch (a STOP, or opened or resumed already
                    # stopped): the sweep settles it later, as on `Meter`.
                    if result.stop.reason == meter_pb.STOP_REASON_REVOKED or (
                            kind == "grant" and result.grant.stopped):
                        driver.killed = True
                if accepted:
                    self.stats.accepted += 1
                    self.stats.accepted_by_method[rpc.full_name] += 1
                    self.invalidate()
                else:
                    self.stats.rejected += 1
                    self.after_rejected(before, rpc.full_name, key, shown,
                                        Outcome(OK, response=response))
        finally:
            driver.cancel()
            self.count(rpc, max(1, sent))
            if driver.killed:
                self.wait_killed_settled()

    def _worker_batch(self, rpc: Rpc, sessions: dict, step: int, realistic: bool) -> Message:
        rng, gen, w = self.rng, self.gen, self.world
        if not realistic:
            return self.request(rpc)
        msg = meter_pb.MeterWorkerRequest(worker_id=w.fuzz_worker_id, batch_id=step + 1)
        if step == 0 or not sessions:
            for i in range(rng.randint(1, 3)):
                voucher, _, _ = self.take_voucher(meter=True)
                msg.opens.add(ref=f"r{i}", open=meter_pb.OpenSession(voucher=voucher))
            if self.open_sessions and rng.random() < 0.3:
                msg.resume_session_ids.append(rng.choice(sorted(self.open_sessions)))
        else:
            finishing = rng.random() < 0.4
            # A finish is signed with the batch, or (as old workers do) on its own.
            own = rng.random() < 0.3
            digests = []
            for session_id, (seq, usage) in sessions.items():
                grown = _grow(rng, usage)
                if finishing:
                    msg.finishes.add(session_id=session_id, finish=meter_pb.FinishSession(
                        usage=grown,
                        signature=self._sign(session_id, grown, final=True) if own else b""))
                    if not own:
                        digests.append(usage_signing.digest(usage_signing.payload(
                            session_id, _usage_record(grown), final=True)))
                else:
                    msg.reports.add(session_id=session_id, seq=seq + 1, usage=grown)
                    digests.append(usage_signing.digest(usage_signing.payload(
                        session_id, _usage_record(grown), seq=seq + 1)))
            if digests:
                msg.signature = usage_signing.sign(w.usage_key,
                                                   usage_signing.batch_payload(digests))
        return gen.mutate(msg) if rng.random() < 0.25 else msg

    def _maybe_mutate(self, msg: Message) -> Message:
        return self.gen.mutate(msg) if self.rng.random() < 0.25 else msg

    def _sign(self, session_id: str, usage, *, seq: int = 0, final: bool = False) -> bytes:
        message = usage_signing.payload(session_id, _usage_record(usage), seq=seq, final=final)
        return usage_signing.sign(self.world.usage_key, message)

    # -- worker jobs -------------------------------------------------------------------

    def fuzz_execute(self, rpc: Rpc) -> None:
        rng = self.rng
        key, metadata = self.pick_key(rpc)
        r = rng.random()
        auth_id = ""
        if r < 0.12:
            voucher, auth_id, _ = self.take_voucher(meter=False)
            msg = self.gen.template(rpc, voucher=voucher)
            if r < 0.04:
                msg = self.gen.mutate(msg)
                msg.voucher = voucher
        else:
            msg = self.request(rpc)
        payload, how = self.encode(rpc, msg)
        shown = lambda: f"{how + ' ' if how else ''}{short_repr(msg)}"  # noqa: E731
        before = self.before()
        events: list = []
        outcome = Outcome(OK)
        try:
            for event in self.world.callable(rpc)(payload, metadata=metadata,
                                                  timeout=JOB_TIMEOUT_S):
                events.append(event)
        except grpc.RpcError as error:
            outcome = Outcome.of(error)
        self.count(rpc)
        self.judge(rpc, key, outcome, len(payload), shown)
        if not events:
            self.stats.rejected += 1
            self.after_rejected(before, rpc.full_name, key, shown(), outcome)
            return
        self.stats.accepted += 1
        self.stats.accepted_by_method[rpc.full_name] += 1
        self.invalidate()
        for event in events:
            self.corpus.harvest(event)
        auth_id = auth_id or self.voucher_auth.get(msg.voucher, "")
        if events[-1].WhichOneof("kind") != "result" and auth_id:
            self.wait_settled(auth_id)

    def wait_killed_settled(self) -> None:
        """A session stopped by the kill switch and left open is settled by the broker's
        sweep two reporting intervals later: let that happen before judging later calls,
        and then until the ledger holds still for a sweep or two (a loaded machine may
        run the sweep late)."""
        time.sleep(KILL_SETTLE_S)
        deadline = time.monotonic() + KILL_SETTLE_MAX_S
        last = self.snapshot()
        while time.monotonic() < deadline:
            time.sleep(QUIET_S)
            now = self.snapshot()
            if now == last:
                break
            last = now
        self.invalidate()

    def wait_settled(self, authorization_id: str, timeout: float = 30.0) -> None:
        """A job whose stream ended early settles in the background: wait for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.setup("broker.v1.AuthorizationService.GetAuthorization",
                               auth_pb.GetAuthorizationRequest(
                                   authorization_id=authorization_id), "owner", check=False)
            if isinstance(found, Message) and found.authorization.state in (
                    auth_pb.AUTHORIZATION_STATE_SETTLED, auth_pb.AUTHORIZATION_STATE_EXPIRED,
                    auth_pb.AUTHORIZATION_STATE_CANCELLED):
                break
            time.sleep(0.1)
        self.invalidate()

    # -- vouchers, holds and upkeep --------------------------------------------------------

    def new_voucher(self, pin: str, amount: int | None = None) -> bool:
        """Authorize a small, long-lived hold (a setup call) and keep its voucher."""
        for attempt in range(3):
            reply = self.setup("broker.v1.AuthorizationService.Authorize",
                               auth_pb.AuthorizeRequest(
                                   request_id=uuid.uuid4().hex,
                                   amount=amount or self.rng.randint(200, 1500),
                                   ttl_seconds=3600, scope={"worker_id": pin},
                                   cache_results=self.rng.random() < 0.3),
                               "agent", check=False)
            if isinstance(reply, Message):
                auth = reply.authorization
                self.held[auth.authorization_id] = auth.voucher
                self.voucher_auth[auth.voucher] = auth.authorization_id
                self.fresh.append((auth.voucher, auth.authorization_id, pin))
                return True
            if attempt == 0 and reply.reason == "WALLET_FROZEN":
                self.setup("broker.v1.WalletService.UnfreezeWallet",
                           wallet_pb.UnfreezeWalletRequest(
                               request_id=uuid.uuid4().hex,
                               wallet_id=self.world.creds["wallet_id"]), "owner", check=False)
            else:
                self.tidy(force=True)
        return False

    def take_voucher(self, *, meter: bool) -> tuple[str, str, str]:
        """A voucher that has not been redeemed yet (pinned to a worker that can take it)."""
        w = self.world
        wanted = (w.fuzz_worker_id, "") if meter else (w.worker.worker_id, "")
        for i, (voucher, auth_id, pin) in enumerate(self.fresh):
            if pin in wanted:
                del self.fresh[i]
                return voucher, auth_id, pin
        pin = self.rng.choice(wanted)
        if self.new_voucher(pin, self.rng.randint(200, 1500) if not meter
                            else self.rng.randint(1000, 50_000)):
            voucher, auth_id, pin = self.fresh.pop()
            return voucher, auth_id, pin
        return self.gen.voucher(), "", ""

    def tidy(self, force: bool = False) -> None:
        """Release what the fuzz holds (cancel held authorizations, settle the fuzz
        worker's open sessions) and top the demo wallet up, so that Authorize keeps
        working. Only setup calls: they invalidate the checksum."""
        w = self.world
        bal = self.setup("broker.v1.WalletService.GetBalance",
                         wallet_pb.GetBalanceRequest(wallet_id=w.creds["wallet_id"]), "owner",
                         check=False)
        if not force and isinstance(bal, Message) and bal.balance.available > 1_000_000:
            return
        for auth_id in list(self.held):
            self.setup("broker.v1.AuthorizationService.CancelAuthorization",
                       auth_pb.CancelAuthorizationRequest(request_id=uuid.uuid4().hex,
                                                          authorization_id=auth_id),
                       "owner", check=False)
            del self.held[auth_id]
        self.fresh = [f for f in self.fresh if f[1] in self.held]
        for session_id in list(self.open_sessions):
            self.settle_session(session_id)
        self.setup("broker.v1.WalletService.UnfreezeWallet",
                   wallet_pb.UnfreezeWalletRequest(request_id=uuid.uuid4().hex,
                                                   wallet_id=w.creds["wallet_id"]),
                   "owner", check=False)
        self.setup("broker.v1.AdminService.CreditTreasury",
                   admin_pb.CreditTreasuryRequest(request_id=uuid.uuid4().hex,
                                                  owner_id=w.creds["owner_id"],
                                                  amount=5_000_000), "admin", check=False)
        bal = self.setup("broker.v1.WalletService.GetBalance",
                         wallet_pb.GetBalanceRequest(wallet_id=w.creds["wallet_id"]), "owner",
                         check=False)
        if isinstance(bal, Message) and bal.balance.posted < 5_000_000:
            self.setup("broker.v1.WalletService.FundWallet",
                       wallet_pb.FundWalletRequest(request_id=uuid.uuid4().hex,
                                                   wallet_id=w.creds["wallet_id"],
                                                   amount=5_000_000 - bal.balance.posted),
                       "owner", check=False)
        self.invalidate()

    def settle_session(self, session_id: str) -> None:
        """Resume one of the fuzz worker's sessions and finish it on its acknowledged usage."""
        rpc = self.by_name["broker.v1.MeteringService.Meter"]
        self.open_sessions.pop(session_id, None)
        driver = StreamDriver(self.world.callable(rpc), self.keys["worker"], CALL_TIMEOUT_S)
        self.stats.setup_calls += 1
        try:
            driver.send(meter_pb.MeterRequest(resume=meter_pb.ResumeSession(
                session_id=session_id, worker_id=self.world.fuzz_worker_id))
                .SerializeToString())
            grant = driver.read()
            if grant is None or grant.WhichOneof("kind") != "grant":
                return
            usage = grant.grant.usage
            driver.send(meter_pb.MeterRequest(finish=meter_pb.FinishSession(
                usage=usage, signature=self._sign(session_id, usage, final=True)))
                .SerializeToString())
            driver.read()
        except grpc.RpcError:
            pass
        finally:
            driver.cancel()
            self.invalidate()

    # -- health ----------------------------------------------------------------------------

    def health(self) -> bool:
        """Both processes alive and serving, the ledger consistent. False: replace them."""
        w = self.world
        if not w.alive():
            self.violation("crash", "-", "", "a process died\n" + w.log_tails(), "")
            return False
        problems = w.serving()
        try:
            w.worker.capabilities()
        except grpc.RpcError as error:
            problems.append(f"worker GetCapabilities: {error.code()}")
        if problems:
            self.violation("health", "-", "", "; ".join(problems), "")
            return False
        self.verify_unchecked()
        return True

    # -- the loop --------------------------------------------------------------------------

    def pick_rpc(self) -> Rpc:
        weights = [4 if rpc.client_streaming or rpc.server_streaming and rpc.target == "worker"
                   else 1 for rpc in self.rpcs]
        return self.rng.choices(self.rpcs, weights)[0]

    def run(self) -> Stats:
        started = time.monotonic()
        own_root = self.root is None
        if own_root:
            self.root = Path(tempfile.mkdtemp(prefix="fuzz-"))
        try:
            self.new_world()
            while self.stats.inputs < self.target_inputs:
                if self.max_seconds and time.monotonic() - started > self.max_seconds:
                    break
                w = self.world
                if self.broken:
                    self.new_world()
                elif w.age > MAX_WORLD_AGE_S or self._last_journal > MAX_WORLD_JOURNAL:
                    self.verify_unchecked()
                    self.new_world()
                before_inputs = self.stats.inputs
                rpc = self.pick_rpc()
                if rpc.full_name == METER_WORKER:
                    self.fuzz_meter_worker(rpc)
                elif rpc.client_streaming:
                    self.fuzz_meter(rpc)
                elif rpc.server_streaming and rpc.target == "broker":
                    self.fuzz_watch(rpc)
                elif rpc.server_streaming:
                    self.fuzz_execute(rpc)
                else:
                    self.fuzz_unary(rpc)
                if self.stats.inputs // 200 != before_inputs // 200:
                    self.tidy()
                if self.stats.inputs // HEALTH_EVERY != before_inputs // HEALTH_EVERY:
                    self.health()
            self.health()
        finally:
            if self.world is not None:
                self.world.close()
            if own_root:
                shutil.rmtree(self.root, ignore_errors=True)
        self.elapsed = time.monotonic() - started
        return self.stats

    def summary_line(self) -> str:
        s = self.stats
        return (f"fuzz: inputs={s.inputs} violations={len(self.violations)} "
                f"messages={s.messages} rpcs={len(s.per_method)}/{len(self.rpcs)} "
                f"accepted={s.accepted} rejected={s.rejected} summaries={s.summaries} "
                f"worlds={s.worlds} seed={self.seed} seconds={self.elapsed:.1f}")

    def report(self) -> str:
        lines = []
        groups: dict[tuple, list[Violation]] = {}
        for v in self.violations:
            groups.setdefault((v.kind, v.method, v.detail[:60]), []).append(v)
        for (kind, method, _), found in list(groups.items())[:40]:
            v = found[0]
            lines.append(f"  [{kind}] {method} x{len(found)} key={v.key}: {v.detail}\n"
                         f"    input: {v.input}")
        missing = [r.full_name for r in self.rpcs if r.full_name not in self.stats.per_method]
        if missing:
            lines.append(f"  not reached: {', '.join(missing)}")
        lines.append("  codes: " + ", ".join(f"{k}={n}" for k, n in
                                             self.stats.codes.most_common()))
        if self.verbose:
            lines.append("  accepted/tried by method:")
            for name, tried in sorted(self.stats.per_method.items()):
                accepted = {k: n for k, n in self.stats.accepted_by_method.items()
                            if k.split(":")[0] == name}
                lines.append(f"    {name}: {tried} tried, accepted {accepted}")
        return "\n".join(lines)


def _usage_record(usage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in
            ("gpu_ms", "input_tokens", "output_tokens", "calls", "energy_mj")}


def _grow(rng: random.Random, last: Any):
    """Cumulative usage a little above `last` (what a real meter would report)."""
    from broker.v1 import resources_pb2 as res_pb

    usage = res_pb.Usage()
    if last is not None:
        usage.CopyFrom(last)
    usage.gpu_ms += rng.randint(0, 400)
    usage.input_tokens += rng.randint(0, 20)
    usage.output_tokens += rng.randint(0, 20)
    usage.calls = max(usage.calls, 1)
    return usage


def _diff(a: tuple | None, b: tuple | None) -> str:
    if a is None or b is None:
        return "unknown"
    return ", ".join(f"{n} {x}->{y}" for n, x, y in zip(SUMMARY_FIELDS, a, b, strict=True)
                     if x != y)


def run_fuzz(inputs: int, seed: int | None = None, *, max_seconds: float | None = None,
             verbose: bool = False) -> Fuzzer:
    fuzzer = Fuzzer(seed=seed if seed is not None else random.randrange(2**32), inputs=inputs,
                    max_seconds=max_seconds, verbose=verbose)
    fuzzer.run()
    return fuzzer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--report", type=Path, default=None,
                        help="write the violations as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    fuzzer = run_fuzz(args.inputs, args.seed, max_seconds=args.max_seconds,
                      verbose=args.verbose)
    if fuzzer.violations or args.verbose:
        print(fuzzer.report())
    if args.report:
        args.report.write_text(json.dumps([v.__dict__ for v in fuzzer.violations], indent=2))
    print(fuzzer.summary_line())
    return 1 if fuzzer.violations else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
