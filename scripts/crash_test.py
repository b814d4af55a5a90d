"""`make crash-test`: SIGKILL a loaded broker again and again; nothing acknowledged is lost.

    python scripts/crash_test.py [--kills 30] [--clients 4] [--processes 1] [--seed N] [--keep]
    python scripts/crash_test.py --store postgresql [--brokers 3] [--kills 30] ...

A real broker (`broker serve --demo`) runs on a fresh data directory. Several client
processes (this script, in client mode) each own a wallet and run concurrent lanes of
work on it: authorize, cancel, redeem a voucher on a metering stream (a Meter stream of
its own, or the client's one MeterWorker stream shared by its lanes), report usage,
finish (settle), abandon a session with a short hold, and leave short holds
(ttl 1..2 s) to expire. The broker is killed with SIGKILL at random moments (0.2 to
1.5 s after each start, so many kills land inside a group commit), sometimes left down
longer than the short holds live (and then, half the time, also killed once while it is
starting up, not counted in --kills), and restarted on the same data directory and port.
Clients retry through every outage with the same request_id. With `--processes N` the
broker is a prefork one (`broker serve --processes N`) in its own process group, and
each kill is a SIGKILL to the whole group (parent and servers at once, as a power cut or
an OOM kill of its cgroup would), with the clients' connections open: the restart must
not be refused for the old connections left in TIME-WAIT on the port.

With `--store postgresql` (`make crash-test CRASH_STORE=postgresql`), --brokers brokers
serve one throwaway PostgreSQL (fsync on; tests/pg_cluster.py) and the clients list them
all (common/targets.py: a broker that dies, the channel moves to the next). Each kill
takes one broker, or the database (every third kill: SIGKILL to the postmaster and
every server process at once, so the restart recovers from the WAL), or (every sixth)
both; the others serve meanwhile, answering UNAVAILABLE with RetryInfo while the
database is away. The same checks follow, and `broker audit --store`.

Each client appends every operation whose reply it received to its own JSON-lines log
(flush + fsync per line). After the last restart and a pause for the expiry sweep,
the log is checked against the live broker and the stopped data directory:

- the ledger invariants hold: GetLedgerSummary.violations is empty, and
  `broker audit` on the stopped data directory exits 0;
- no voucher is redeemed twice: a second open of every logged voucher is refused with
  VOUCHER_ALREADY_REDEEMED (VOUCHER_EXPIRED once its hold timed out), and each
  authorization has at most one session;
- every acknowledged operation is there: authorizations with their amounts, cancels
  as CANCELLED, receipts with the same charge, and every session's final charge is at
  least the last charge acknowledged for it;
- nothing is charged above its hold;
- holds whose time is up are resolved (none HELD or REDEEMED), and each wallet's
  pending balance equals the sum of its live holds.

Prints one line, `crash-test: kills=N operations=N acknowledged=N violations=N`
(operations: requests sent, each retry counted; acknowledged: replies received and
logged), with details and every violation on stderr before it, and exits 0 only with
no violations and at least --kills kills. Unexpected refusals (anything but, say,
INSUFFICIENT_FUNDS or a STOP that crossed a report) count as violations too. The work
directory (data dir, broker log, client logs) is kept when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from broker.v1 import admin_service_pb2 as admin_pb  # noqa: E402
from broker.v1 import admin_service_pb2_grpc as admin_grpc  # noqa: E402
from broker.v1 import authorization_service_pb2 as auth_pb  # noqa: E402
from broker.v1 import authorization_service_pb2_grpc as auth_grpc  # noqa: E402
from broker.v1 import resources_pb2 as res_pb  # noqa: E402
from broker.v1 import wallet_service_pb2 as wallet_pb  # noqa: E402
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc  # noqa: E402
from broker.v1 import worker_registry_service_pb2 as registry_pb  # noqa: E402
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc  # noqa: E402
from common.status import error_info  # noqa: E402
from common.targets import grpc_target  # noqa: E402
from tests.integration.broker_process import BrokerProcess, free_port  # noqa: E402
from tests.pg_cluster import PORT as PG_PORT  # noqa: E402
from tests.pg_cluster import PgCluster  # noqa: E402
from worker.broker_link import AlreadySettled, MeteringSession, SessionClosed  # noqa: E402
from worker.worker_stream import BatchedSession, WorkerStream  # noqa: E402

LANES = 4  # concurrent flows per client process
WALLET_CAP = 10_000_000
WALLET_FUNDING = 5_000_000
GPU_SECOND_PRICE = 1000  # 1 micro-credit per GPU-millisecond
CALL_PRICE = 7
CALL_TIMEOUT_S = 5.0  # one attempt of one call
RETRY_S = 40.0  # one operation, retried through outages, before a lane gives up
LONG_OUTAGE_S = 2.6  # longer than the short holds live: they expire while down
SHORT_TTL_MAX_S = 3
EXPIRED_MARGIN_MS = 1500  # the sweep runs every 0.5 s
STALE_READS = 10  # a loaded machine may delay the sweep: look again, 1 s apart
# The ledger summary (a whole audit) and the listings at the end: on PostgreSQL on a
# loaded machine, with tens of thousands of rows, they take longer than one call.
AUDIT_TIMEOUT_S = 120
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                   ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 250)]

HELD = auth_pb.AUTHORIZATION_STATE_HELD
REDEEMED = auth_pb.AUTHORIZATION_STATE_REDEEMED
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED
CANCELLED = auth_pb.AUTHORIZATION_STATE_CANCELLED
EXPIRED = auth_pb.AUTHORIZATION_STATE_EXPIRED
STATE_NAMES = {v: k.removeprefix("AUTHORIZATION_STATE_")
               for k, v in auth_pb.AuthorizationState.items()}

# Refusals a flow may meet without anything being wrong (flow kind -> op -> reasons).
EXPECTED_REFUSALS = {
    "authorize": {"INSUFFICIENT_FUNDS"},
    "open": set(),
    "report": {"USAGE_AFTER_STOP"},
    "finish": set(),
    "resume": {"SESSION_ALREADY_SETTLED"},
    "cancel": set(),
}
# An abandoned session has a short hold: its voucher or session may time out meanwhile
# (a retried open of a session that settled at its hold's expiry is told so).
EXPECTED_WHEN_SHORT = {"open": {"VOUCHER_EXPIRED", "SESSION_ALREADY_SETTLED"},
                       "report": {"VOUCHER_EXPIRED", "SESSION_ALREADY_SETTLED"}}


def rid() -> str:
    return uuid.uuid4().hex


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def voucher_id_of(token: str) -> str:
    claims = token.split(".")[2]
    return json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["vid"]


# -- errors ----------------------------------------------------------------------------


class Refused(Exception):
    """The broker gave a definite answer other than success."""

    def __init__(self, op: str, reason: str, error: BaseException):
        self.op, self.reason, self.error = op, reason, error
        super().__init__(f"{op}: {reason}")


class GaveUp(Exception):
    """An operation stayed unanswered through RETRY_S of retries."""


def classify(error: BaseException) -> tuple[bool, str]:
    """(transient, reason). Transient: the broker went away (or the call timed out);
    the same request may be sent again. Otherwise the reason is the ErrorInfo reason,
    or the status code and details when there is none (never expected)."""
    if isinstance(error, SessionClosed):
        if error.error is None:
            return True, "stream closed"
        error = error.error
    if isinstance(error, TimeoutError):
        return True, "timeout"
    if not isinstance(error, grpc.RpcError):
        return False, repr(error)
    code, details = error.code(), error.details() or ""
    info = error_info(error)
    if info is not None and info.reason:
        return code == grpc.StatusCode.UNAVAILABLE, info.reason
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED):
        return True, code.name
    # A connection cut mid-call can surface as UNKNOWN/INTERNAL from the transport; the
    # broker's own internal errors say exactly "internal error" (never expected).
    if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and \
            details != "internal error":
        return True, f"{code.name}: {details}"
    return False, f"{code.name}: {details}"


# -- client process ----------------------------------------------------------------------


class Client:
    """One client process: LANES concurrent lanes of flows on one wallet."""

    def __init__(self, config: dict):
        self.config = config
        self.rng = random.Random(config["seed"])
        self.stop_file = Path(config["stop_file"])
        self.log = open(config["log"], "a")  # noqa: SIM115 - closed in run()
        self.stats: dict = {"operations": 0, "acknowledged": 0, "retries": 0,
                            "gave_up": 0, "flows": Counter(), "refused": Counter(),
                            "transient": Counter(), "violations": []}
        self.channel: grpc.aio.Channel | None = None

    # Logging ---------------------------------------------------------------------------

    def record(self, entry: dict, *, acknowledged: bool = True) -> None:
        self.log.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        if acknowledged:
            self.stats["acknowledged"] += 1

    def violation(self, text: str) -> None:
        self.stats["violations"].append(text)

    # Retrying ---------------------------------------------------------------------------

    async def retrying(self, op: str, attempt, *, short: bool = False, **context: str):
        """Run `attempt()` until it answers; transient failures are retried (the
        request_id inside stays the same). A refusal raises Refused."""
        deadline = time.monotonic() + RETRY_S
        while True:
            self.stats["operations"] += 1
            try:
                return await asyncio.wait_for(attempt(), CALL_TIMEOUT_S)
            except (grpc.RpcError, SessionClosed, TimeoutError) as error:
                transient, reason = classify(error)
                if not transient:
                    raise self.refused(op, reason, error, short=short, **context) from None
                self.stats["retries"] += 1
                self.stats["transient"][reason[:60]] += 1
                if time.monotonic() > deadline:
                    raise GaveUp(op) from None
                await asyncio.sleep(self.rng.uniform(0.05, 0.2))

    def refused(self, op: str, reason: str, error: BaseException, *, short: bool,
                **context: str) -> Refused:
        self.stats["refused"][f"{op}:{reason}"] += 1
        expected = EXPECTED_REFUSALS.get(op, set()) | (
            EXPECTED_WHEN_SHORT.get(op, set()) if short else set())
        details = error.details() if isinstance(error, grpc.RpcError) else str(error)
        self.record({"op": "refused", "what": op, "reason": reason, "details": details,
                     "time_ms": int(time.time() * 1000), **context}, acknowledged=False)
        if reason not in expected:
            self.violation(f"unexpected refusal of {op}: {reason} {context}")
        return Refused(op, reason, error)

    async def unary(self, op: str, method, request, key: str, **context: str):
        return await self.retrying(op, lambda: method(
            request, metadata=bearer(key), timeout=CALL_TIMEOUT_S, wait_for_ready=True),
            **context)

    # Operations -------------------------------------------------------------------------

    async def authorize(self, flow: str, amount: int, ttl: int) -> auth_pb.Authorization:
        scope = res_pb.Scope(model="tiny-lm", worker_id=self.config["worker_id"],
                             max_prices=res_pb.PriceSheet(gpu_second_price=GPU_SECOND_PRICE))
        request = auth_pb.AuthorizeRequest(request_id=rid(), amount=amount, scope=scope,
                                           ttl_seconds=ttl)
        reply = await self.unary("authorize", self.auths.Authorize, request,
                                 self.config["agent_key"])
        auth = reply.authorization
        self.record({"op": "authorize", "flow": flow, "auth": auth.authorization_id,
                     "amount": auth.amount, "wallet": auth.wallet_id, "ttl": ttl,
                     "expire_ms": auth.expire_time.ToMilliseconds()})
        if auth.amount != amount:
            self.violation(f"authorize {auth.authorization_id}: amount {auth.amount} "
                           f"!= requested {amount}")
        return auth

    async def cancel(self, auth: auth_pb.Authorization) -> None:
        request = auth_pb.CancelAuthorizationRequest(request_id=rid(),
                                                     authorization_id=auth.authorization_id)
        reply = await self.unary("cancel", self.auths.CancelAuthorization, request,
                                 self.config["agent_key"], auth=auth.authorization_id)
        state = reply.authorization.state
        self.record({"op": "cancel", "auth": auth.authorization_id,
                     "state": STATE_NAMES[state]})
        if state != CANCELLED:
            self.violation(f"cancel {auth.authorization_id} answered {STATE_NAMES[state]}")

    async def open(self, auth: auth_pb.Authorization, short: bool) -> MeteringSession:
        request_id = rid()  # the same on every retry: a lost grant comes back the same
        # Half the sessions on the client's one MeterWorker stream, shared by its lanes.
        if self.rng.random() < 0.5:
            session = await self.retrying("open", lambda: self.stream.open(
                auth.voucher, model="tiny-lm", request_id=request_id), short=short,
                auth=auth.authorization_id)
        else:
            session = await self.retrying("open", lambda: MeteringSession.open(
                self.channel, self.config["worker_key"], auth.voucher,
                self.config["worker_id"], model="tiny-lm", request_id=request_id),
                short=short, auth=auth.authorization_id)
        self.record({"op": "grant", "auth": auth.authorization_id,
                     "session": session.session_id, "voucher": auth.voucher,
                     "voucher_id": voucher_id_of(auth.voucher),
                     "expire_ms": auth.expire_time.ToMilliseconds(),
                     "budget": session.grant.budget})
        return session

    async def resume(self, auth_id: str, session_id: str,
                     short: bool) -> MeteringSession | BatchedSession | res_pb.Receipt | None:
        """Re-attach after a broken stream (on either kind of stream, whichever it came
        from); when the session is already settled, the receipt the resume is answered
        with (docs/wire.md, "A finish answered again"), or None when it is refused."""
        try:
            if self.rng.random() < 0.5:
                return await self.retrying("resume", lambda: self.stream.resume(session_id),
                                           short=short, auth=auth_id, session=session_id)
            return await self.retrying("resume", lambda: MeteringSession.resume(
                self.channel, self.config["worker_key"], session_id, self.config["worker_id"]),
                short=short, auth=auth_id, session=session_id)
        except AlreadySettled as settled:
            self.stats["refused"]["resume:settled (answered with the receipt)"] += 1
            return settled.settled.receipt
        except Refused as refusal:
            if refusal.reason == "SESSION_ALREADY_SETTLED":
                return None
            raise

    async def read_receipt(self, auth_id: str, session_id: str) -> None:
        """The finish reply was lost but the session is settled: read the receipt (a read,
        logged for the checks but not counted as an acknowledged operation)."""
        reply = await self.retrying("get_receipt", lambda: self.auths.GetReceipt(
            auth_pb.GetReceiptRequest(authorization_id=auth_id),
            metadata=bearer(self.config["agent_key"]), timeout=CALL_TIMEOUT_S,
            wait_for_ready=True), auth=auth_id, session=session_id)
        r = reply.receipt
        self.record({"op": "receipt_read", "auth": auth_id, "session": r.session_id,
                     "receipt": r.receipt_id, "charged": r.charged, "held": r.held,
                     "outcome": r.outcome}, acknowledged=False)
        if r.session_id != session_id:
            self.violation(f"receipt of {auth_id} names session {r.session_id}, "
                           f"granted {session_id}")

    # Flows ------------------------------------------------------------------------------

    async def flow_expire(self) -> None:
        """A short hold nobody touches: it must time out and be released."""
        await self.authorize("expire", self.rng.randint(1_000, 60_000), self.rng.randint(1, 2))

    async def flow_cancel(self) -> None:
        auth = await self.authorize("cancel", self.rng.randint(1_000, 150_000),
                                    self.rng.randint(60, 600))
        await asyncio.sleep(self.rng.uniform(0, 0.05))
        await self.cancel(auth)

    async def flow_redeem(self, abandon: bool) -> None:
        """Authorize, redeem, report cumulative usage, then finish (or vanish, leaving a
        short hold to time out and settle on the last acknowledged usage)."""
        flow = "abandon" if abandon else "redeem"
        ttl = self.rng.randint(2, SHORT_TTL_MAX_S) if abandon else 600
        auth = await self.authorize(flow, self.rng.randint(20_000, 200_000), ttl)
        auth_id = auth.authorization_id
        session = await self.open(auth, abandon)
        session_id = session.session_id
        usage = {"gpu_ms": 0, "calls": 0}
        try:
            for _ in range(self.rng.randint(1, 6)):
                usage = {"gpu_ms": usage["gpu_ms"] + self.rng.randint(1, 3_000),
                         "calls": usage["calls"] + self.rng.randint(0, 2)}
                deadline = time.monotonic() + RETRY_S
                while not session.stopped.is_set():
                    if time.monotonic() > deadline:
                        raise GaveUp("report")
                    self.stats["operations"] += 1
                    try:
                        ack = await asyncio.wait_for(session.report(usage), CALL_TIMEOUT_S)
                    except (grpc.RpcError, SessionClosed, TimeoutError) as error:
                        transient, reason = classify(error)
                        if not transient and reason != "USAGE_AFTER_STOP":
                            raise self.refused("report", reason, error, short=abandon,
                                               auth=auth_id, session=session_id) from None
                        if reason == "USAGE_AFTER_STOP":  # the STOP was still on its way
                            self.stats["refused"]["report:USAGE_AFTER_STOP"] += 1
                        else:
                            self.stats["retries"] += 1
                            self.stats["transient"][reason[:60]] += 1
                        await session.abandon()
                        resumed = await self.resume(auth_id, session_id, abandon)
                        if resumed is None or isinstance(resumed, res_pb.Receipt):
                            session = None
                            if not abandon:
                                self.violation(f"session {session_id} settled before finish")
                            return
                        session = resumed
                        continue
                    self.record({"op": "ack", "auth": auth_id, "session": session_id,
                                 "seq": ack.seq, "charged": ack.charged})
                    if ack.charged > session.grant.budget:
                        self.violation(f"ack of {session_id} charged {ack.charged} above "
                                       f"the budget {session.grant.budget}")
                    break
                if session.stopped.is_set():
                    break
                await asyncio.sleep(self.rng.uniform(0.005, 0.08))
            if abandon:
                return
            await self.finish(auth_id, session, usage)
        finally:
            if session is not None:
                await session.abandon()

    async def finish(self, auth_id: str, session: MeteringSession, usage: dict) -> None:
        session_id = session.session_id
        deadline = time.monotonic() + RETRY_S
        retried = False
        while True:
            self.stats["operations"] += 1
            try:
                receipt = await asyncio.wait_for(session.finish(usage), CALL_TIMEOUT_S)
            except (grpc.RpcError, SessionClosed, TimeoutError) as error:
                transient, reason = classify(error)
                if retried and reason == "SESSION_ALREADY_SETTLED":
                    # The first finish, given up on (a timeout), committed after the
                    # resume: a broker keeps running an op whose caller went away (on
                    # PostgreSQL through its retries). It settled on this same usage.
                    self.stats["refused"]["finish:SESSION_ALREADY_SETTLED (late)"] += 1
                    await self.read_receipt(auth_id, session_id)
                    return
                if not transient:
                    raise self.refused("finish", reason, error, short=False, auth=auth_id,
                                       session=session_id) from None
                retried = True
                self.stats["retries"] += 1
                self.stats["transient"][reason[:60]] += 1
                if time.monotonic() > deadline:
                    raise GaveUp("finish") from None
                await session.abandon()
                resumed = await self.resume(auth_id, session_id, False)
                if resumed is None:  # it did settle; only the answer was lost
                    await self.read_receipt(auth_id, session_id)
                    return
                if isinstance(resumed, res_pb.Receipt):  # ... and the resume answers it
                    receipt = resumed
                    break
                session = resumed
                continue
            break
        # The answer to the finish, or to the resume that found the session settled.
        self.record({"op": "receipt", "auth": auth_id, "session": receipt.session_id,
                     "receipt": receipt.receipt_id, "charged": receipt.charged,
                     "held": receipt.held, "outcome": receipt.outcome})
        # The worker's copy names no authorization (docs/privacy.md); the session it has.
        if receipt.session_id != session_id or receipt.authorization_id:
            self.violation(f"receipt {receipt.receipt_id} is for another session")

    async def lane(self) -> None:
        flows = (("redeem", 45), ("cancel", 20), ("expire", 20), ("abandon", 15))
        names, weights = zip(*flows, strict=True)
        while not self.stop_file.exists():
            flow = self.rng.choices(names, weights)[0]
            self.stats["flows"][flow] += 1
            try:
                if flow == "expire":
                    await self.flow_expire()
                elif flow == "cancel":
                    await self.flow_cancel()
                else:
                    await self.flow_redeem(abandon=flow == "abandon")
            except Refused:
                pass  # counted (and judged) where it was raised
            except GaveUp as gave_up:
                self.stats["gave_up"] += 1
                self.stats["transient"][f"gave up: {gave_up}"] += 1
            except Exception as error:  # noqa: BLE001 - a harness bug must not hang the run
                self.violation(f"{flow} flow crashed: {error!r}")

    async def run(self) -> dict:
        self.channel = grpc.aio.insecure_channel(grpc_target(self.config["target"]),
                                                 options=CHANNEL_OPTIONS)
        self.auths = auth_grpc.AuthorizationServiceStub(self.channel)
        self.stream = WorkerStream(self.channel, self.config["worker_key"],
                                   self.config["worker_id"])
        try:
            await asyncio.gather(*(self.lane() for _ in range(self.config["lanes"])))
        finally:
            await self.stream.close()
            await self.channel.close()
            self.log.close()
        return self.stats


def client_main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    stats = asyncio.run(Client(config).run())
    Path(config["stats"]).write_text(json.dumps(stats))
    return 0


# -- the controller -------------------------------------------------------------------


def _running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Run:
    """The broker (or brokers and their database), its clients, the kills and the
    final checks."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.cluster: PgCluster | None = None
        self.url = ""
        if args.store == "postgresql":
            # Brokers on one throwaway PostgreSQL, all mounting one key directory; their
            # --store is known once the database is (setup).
            self.brokers = [BrokerProcess(work / "keys", free_port())
                            for _ in range(args.brokers)]
            for i, broker in enumerate(self.brokers):
                broker.log_path = work / f"broker-{i}.log"
        else:
            prefork = ("--processes", str(args.processes)) if args.processes > 1 else ()
            self.brokers = [BrokerProcess(work / "data", free_port(), extra_args=prefork,
                                          own_group=bool(prefork))]
        self.broker = self.brokers[0]  # the one setup and the checks talk to
        self.kills = 0
        self.broker_kills = 0
        self.database_kills = 0
        self.violations: list[str] = []
        self.clients: list[dict] = []
        self.procs: list[subprocess.Popen] = []
        self.released_at_start = 0
        self.startup_kills = 0

    def say(self, text: str) -> None:
        if self.args.verbose:
            print(text, file=sys.stderr, flush=True)

    # Setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        if self.args.store == "postgresql":
            self.start_database()
        for broker in self.brokers:
            broker.start(timeout=60)
        self.creds = creds = self.broker.credentials
        with grpc.insecure_channel(self.broker.target) as ch:
            worker = registry_grpc.WorkerRegistryServiceStub(ch).RegisterWorker(
                registry_pb.RegisterWorkerRequest(
                    request_id=rid(), endpoint="127.0.0.1:7001",
                    capabilities=registry_pb.Capabilities(resource_class="cpu",
                                                          models=["tiny-lm"], meter="cpu_time"),
                    prices=res_pb.PriceSheet(gpu_second_price=GPU_SECOND_PRICE,
                                             call_price=CALL_PRICE)),
                metadata=bearer(creds["worker_api_key"]), timeout=10)
            self.worker_id = worker.worker_id
            wallets = wallet_grpc.WalletServiceStub(ch)
            admin = admin_grpc.AdminServiceStub(ch)
            owner_md, admin_md = bearer(creds["owner_api_key"]), bearer(creds["admin_api_key"])
            for i in range(self.args.clients):
                wallet = wallets.CreateWallet(wallet_pb.CreateWalletRequest(
                    request_id=rid(), display_name=f"crash client {i}", cap=WALLET_CAP,
                    refill_target=WALLET_FUNDING), metadata=owner_md, timeout=10).wallet
                wallets.FundWallet(wallet_pb.FundWalletRequest(
                    request_id=rid(), wallet_id=wallet.wallet_id, amount=WALLET_FUNDING),
                    metadata=owner_md, timeout=10)
                agent_key = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
                    request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=creds["owner_id"],
                    wallet_id=wallet.wallet_id, description=f"crash client {i}"),
                    metadata=admin_md, timeout=10).api_key
                self.clients.append({
                    "target": ",".join(b.target for b in self.brokers), "agent_key": agent_key,
                    "worker_key": creds["worker_api_key"], "worker_id": self.worker_id,
                    "wallet_id": wallet.wallet_id, "lanes": self.args.lanes,
                    "seed": self.rng.randrange(2**32), "stop_file": str(self.stop_file),
                    "log": str(self.work / f"client-{i}.jsonl"),
                    "stats": str(self.work / f"client-{i}.stats.json")})

    @property
    def stop_file(self) -> Path:
        return self.work / "STOP"

    def start_clients(self) -> None:
        for i, config in enumerate(self.clients):
            path = self.work / f"client-{i}.json"
            path.write_text(json.dumps(config))
            out = open(self.work / f"client-{i}.out", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--client-config", str(path)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
            out.close()

    # The kills ------------------------------------------------------------------------

    def kill_loop(self) -> None:
        time.sleep(self.rng.uniform(0.5, 1.0))  # let the load build up first
        if self.cluster is not None:
            self.kill_loop_cluster()
            return
        for i in range(self.args.kills):
            time.sleep(self.rng.uniform(0.2, 1.5))
            if self.broker.proc.poll() is not None:
                self.violations.append(f"broker exited by itself ({self.broker.proc.returncode})")
                self.broker.start()
                continue
            idle = self.idle_connection() if self.args.processes > 1 else None
            self.broker.kill()
            self.kills += 1
            self.broker_kills += 1
            # Now and then stay down longer than the short holds live.
            long = i % 5 == 1
            down = LONG_OUTAGE_S if long else self.rng.uniform(0.0, 0.8)
            time.sleep(down)
            if long and self.rng.random() < 0.5:
                self.kill_while_starting(self.broker)
            try:
                self.broker.start()
            except (RuntimeError, TimeoutError) as error:
                self.violations.append(f"broker did not restart after kill {self.kills}: "
                                       f"{str(error)[-500:]}")
                raise
            if idle is not None:
                idle.close()
            self.say(f"kill {self.kills}: down {down:.2f} s")

    def idle_connection(self) -> grpc.Channel:
        """A connection that is open and quiet when the broker dies: the killed server's
        end of it is left in TIME-WAIT, which must not stop the restart (the busy
        clients' connections are usually reset instead)."""
        channel = grpc.insecure_channel(self.broker.target)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return channel

    def kill_while_starting(self, broker: BrokerProcess) -> None:
        """SIGKILL a broker that is still starting (opening the store, resolving the holds
        that timed out while it was down). Not counted in --kills."""
        def start() -> None:
            with contextlib.suppress(RuntimeError):  # "broker exited with -9": expected
                broker.start()

        old = broker.proc
        starter = threading.Thread(target=start)
        starter.start()
        time.sleep(self.rng.uniform(0.08, 0.25))
        proc = broker.proc
        if proc is not old and proc.poll() is None:
            broker.kill()  # the process group too, for a prefork broker
            self.startup_kills += 1
        starter.join()
        if broker.proc.poll() is None:  # it was ready before the kill: stop it too
            broker.kill()

    # PostgreSQL mode --------------------------------------------------------------------

    def start_database(self) -> None:
        """A throwaway PostgreSQL with fsync on (a kill must not lose a commit it
        acknowledged), one database, the brokers pointed at it."""
        self.cluster = PgCluster(durable=True).start()
        self.url = self.cluster.create_database("broker")
        for broker in self.brokers:
            broker.extra_args = ("--store", self.url)

    def kill_database(self) -> None:
        """SIGKILL the postmaster and every server process at once (as an OOM kill of
        its cgroup would); the next start recovers from the WAL."""
        assert self.cluster is not None
        postmaster = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children")
        victims = [postmaster, *map(int, children.read_text().split())]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL's processes did not die on SIGKILL")
            time.sleep(0.02)
        # Every one of them is gone: the lock files are stale. Remove them, as an operator
        # would, because their PID may already belong to another process (PIDs wrap
        # quickly on a busy machine), and then the server refuses to start.
        socket = self.cluster.socket_dir / f".s.PGSQL.{PG_PORT}"
        for stale in (self.cluster.data / "postmaster.pid", socket.with_name(
                socket.name + ".lock"), socket):
            stale.unlink(missing_ok=True)

    def kill_loop_cluster(self) -> None:
        """Each kill takes one broker (at random), or the database (every third kill;
        every sixth, the database and a broker at once). A killed broker comes back on
        the same port after a while (the others serve meanwhile); the database comes
        back first when both went."""
        assert self.cluster is not None
        for i in range(self.args.kills):
            time.sleep(self.rng.uniform(0.2, 1.5))
            for broker in self.brokers:
                if broker.proc.poll() is not None:
                    self.violations.append(f"broker {broker.target} exited by itself "
                                           f"({broker.proc.returncode})")
                    broker.start(timeout=60)
            database = i % 3 == 2
            broker = self.rng.choice(self.brokers) if i % 6 == 5 or not database else None
            if database:
                self.kill_database()
                self.database_kills += 1
            if broker is not None:
                broker.kill()
                self.broker_kills += 1
            self.kills += 1
            long = i % 5 == 1  # longer than the short holds live
            down = LONG_OUTAGE_S if long else self.rng.uniform(0.0, 0.8)
            time.sleep(down)
            try:
                if database:
                    self.cluster.start()
                if broker is not None:
                    if long and self.rng.random() < 0.5:
                        self.kill_while_starting(broker)
                    broker.start(timeout=60)
            except (RuntimeError, TimeoutError) as error:
                self.violations.append(f"no restart after kill {self.kills}: "
                                       f"{str(error)[-500:]}")
                raise
            self.say(f"kill {self.kills}: {'database ' if database else ''}"
                     f"{broker.target if broker else ''} down {down:.2f} s")

    def stop_clients(self) -> list[dict]:
        self.stop_file.touch()
        stats = []
        for i, proc in enumerate(self.procs):
            try:
                code = proc.wait(RETRY_S * 2 + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                self.violations.append(f"client {i} did not stop")
            path = Path(self.clients[i]["stats"])
            if code != 0 or not path.exists():
                out = (self.work / f"client-{i}.out").read_text(errors="replace")
                self.violations.append(f"client {i} failed ({code}): {out[-800:]}")
                continue
            stats.append(json.loads(path.read_text()))
        return stats

    def run(self) -> tuple[int, int]:
        self.setup()
        self.start_clients()
        try:
            self.kill_loop()
            time.sleep(1.0)  # some load on the last broker too
        finally:
            client_stats = self.stop_clients()
        # Let every short hold time out and the sweep resolve it.
        time.sleep(SHORT_TTL_MAX_S + 1.5)
        operations = sum(s["operations"] for s in client_stats)
        acknowledged = sum(s["acknowledged"] for s in client_stats)
        for i, s in enumerate(client_stats):
            self.violations += [f"client {i}: {v}" for v in s["violations"]]
        self.client_stats = client_stats
        self.verify()
        return operations, acknowledged

    # Verification -----------------------------------------------------------------------

    def read_logs(self) -> list[dict]:
        entries = []
        for config in self.clients:
            path = Path(config["log"])
            for line in path.read_text().splitlines():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    self.violations.append(f"{path.name}: unreadable line {line[:80]!r}")
        return entries

    def verify(self) -> None:
        v = self.violations
        entries = self.read_logs()
        creds = self.creds
        with grpc.insecure_channel(self.broker.target) as ch:
            auths = auth_grpc.AuthorizationServiceStub(ch)
            wallets = wallet_grpc.WalletServiceStub(ch)
            admin = admin_grpc.AdminServiceStub(ch)
            owner_md = bearer(creds["owner_api_key"])

            summary = admin.GetLedgerSummary(admin_pb.GetLedgerSummaryRequest(),
                                             metadata=bearer(creds["admin_api_key"]),
                                             timeout=AUDIT_TIMEOUT_S)
            v += [f"ledger: {problem}" for problem in summary.violations]

            # Every authorization of every client wallet, as the broker has it now.
            found: dict[str, auth_pb.Authorization] = {}
            for config in self.clients:
                found.update(self.wallet_checks(auths, wallets, owner_md, config["wallet_id"]))

            def get(auth_id: str) -> auth_pb.Authorization | None:
                if auth_id not in found:
                    try:
                        found[auth_id] = auths.GetAuthorization(
                            auth_pb.GetAuthorizationRequest(authorization_id=auth_id),
                            metadata=owner_md, timeout=10).authorization
                    except grpc.RpcError as error:
                        v.append(f"authorization {auth_id}: {error.code().name} "
                                 f"{error.details()}")
                        return None
                return found[auth_id]

            by_op = defaultdict(list)
            for e in entries:
                by_op[e["op"]].append(e)
            for e in by_op["authorize"]:
                auth = get(e["auth"])
                if auth is None:
                    continue
                if (auth.amount, auth.wallet_id) != (e["amount"], e["wallet"]):
                    v.append(f"authorization {e['auth']}: {auth.amount} on {auth.wallet_id}, "
                             f"acknowledged {e['amount']} on {e['wallet']}")
                if e["flow"] == "expire" and auth.state != EXPIRED:
                    # Nobody touched it: its short hold must have timed out and been released.
                    v.append(f"authorization {e['auth']}: untouched {e['ttl']} s hold is "
                             f"{STATE_NAMES[auth.state]}, not EXPIRED")
            for e in by_op["cancel"]:
                auth = get(e["auth"])
                if auth is not None and auth.state != CANCELLED:
                    v.append(f"authorization {e['auth']}: cancel acknowledged, "
                             f"state is {STATE_NAMES[auth.state]}")
            sessions: dict[str, set[str]] = defaultdict(set)
            session_auth: dict[str, str] = {}
            grants: dict[str, dict] = {}
            for e in by_op["grant"]:
                sessions[e["auth"]].add(e["session"])
                session_auth[e["session"]] = e["auth"]
                grants[e["session"]] = e
                auth = get(e["auth"])
                if auth is not None and auth.state not in (REDEEMED, SETTLED):
                    v.append(f"authorization {e['auth']}: redeemed (grant acknowledged), "
                             f"state is {STATE_NAMES[auth.state]}")
            v += [f"authorization {a}: {len(s)} sessions granted" for a, s in sessions.items()
                  if len(s) > 1]
            for e in by_op["receipt"] + by_op["receipt_read"]:
                self.check_receipt(auths, owner_md, get(e["auth"]), e)

            last_ack: dict[str, dict] = {}
            for e in by_op["ack"]:
                if e["session"] not in last_ack or e["seq"] >= last_ack[e["session"]]["seq"]:
                    last_ack[e["session"]] = e
            open_sessions = []
            for session_id, e in last_ack.items():
                auth = get(e["auth"])
                if auth is None:
                    continue
                if auth.state == SETTLED:
                    if auth.charged < e["charged"]:
                        v.append(f"session {session_id}: settled at {auth.charged}, "
                                 f"{e['charged']} was acknowledged")
                elif auth.state == REDEEMED:
                    open_sessions.append(e)
                else:
                    v.append(f"session {session_id}: authorization is "
                             f"{STATE_NAMES[auth.state]}")
            asyncio.run(self.async_checks(open_sessions, list(grants.values())))

            summary = admin.GetLedgerSummary(admin_pb.GetLedgerSummaryRequest(),
                                             metadata=bearer(creds["admin_api_key"]),
                                             timeout=AUDIT_TIMEOUT_S)
            v += [f"ledger (after the second opens): {p}" for p in summary.violations]

        self.authorizations = len(found)
        for broker in self.brokers:
            code = broker.stop()
            if code != 0:
                v.append(f"broker {broker.target} exited with {code} on SIGTERM")
        store = ("--store", self.url) if self.url else ()
        audit = subprocess.run([sys.executable, "-m", "broker.cli", "audit", "--data-dir",
                                str(self.broker.data_dir), *store], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        if audit.returncode != 0:
            v.append(f"broker audit exited {audit.returncode}: "
                     f"{(audit.stdout + audit.stderr)[-1500:]}")
        self.released_at_start = sum(
            int(line.split("resolved ")[1].split()[0])
            for broker in self.brokers for line in broker.log().splitlines()
            if "holds that timed out while the broker was down" in line)

    def wallet_checks(self, auths, wallets, md, wallet_id: str) -> dict[str, auth_pb.Authorization]:
        """Every authorization of the wallet: charged <= amount, nothing live after its
        time, and the pending balance equals the sum of the live holds."""
        v = self.violations
        for attempt in range(STALE_READS):
            now_ms = int(time.time() * 1000)
            before, listed, after = self.read_wallet(auths, wallets, md, wallet_id)
            stale = [a for a in listed if a.state in (HELD, REDEEMED) and
                     a.expire_time.ToMilliseconds() < now_ms - EXPIRED_MARGIN_MS]
            if before == after and (not stale or attempt == STALE_READS - 1):
                break
            # A balance moved between the reads, or the sweep is running behind on a
            # loaded machine: read again a little later.
            time.sleep(1.0)
        live = sum(a.amount for a in listed if a.state in (HELD, REDEEMED))
        if after.pending != live:
            v.append(f"wallet {wallet_id}: pending {after.pending} != {live} in live holds")
        for a in listed:
            if a.charged > a.amount:
                v.append(f"authorization {a.authorization_id}: charged {a.charged} above "
                         f"its hold of {a.amount}")
        v += [f"authorization {a.authorization_id}: {STATE_NAMES[a.state]} "
              f"{now_ms - a.expire_time.ToMilliseconds()} ms after its expiry" for a in stale]
        return {a.authorization_id: a for a in listed}

    @staticmethod
    def read_wallet(auths, wallets, md, wallet_id: str) -> tuple:
        """(balance, every authorization, balance again)."""
        def balance() -> res_pb.Balance:
            return wallets.GetBalance(wallet_pb.GetBalanceRequest(wallet_id=wallet_id),
                                      metadata=md, timeout=10).balance

        before, listed, token = balance(), [], ""
        while True:
            page = auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
                wallet_id=wallet_id, page_size=1000, page_token=token), metadata=md,
                timeout=AUDIT_TIMEOUT_S)
            listed += page.authorizations
            token = page.next_page_token
            if not token:
                return before, listed, balance()

    def check_receipt(self, auths, md, auth: auth_pb.Authorization | None, e: dict) -> None:
        v = self.violations
        if auth is None:
            return
        if auth.state != SETTLED or auth.receipt_id != e["receipt"] or \
                auth.charged != e["charged"]:
            v.append(f"authorization {e['auth']}: {STATE_NAMES[auth.state]}, receipt "
                     f"{auth.receipt_id!r} charged {auth.charged}; acknowledged receipt "
                     f"{e['receipt']} charged {e['charged']}")
        try:
            receipt = auths.GetReceipt(auth_pb.GetReceiptRequest(authorization_id=e["auth"]),
                                       metadata=md, timeout=10).receipt
        except grpc.RpcError as error:
            v.append(f"receipt of {e['auth']}: {error.code().name} {error.details()}")
            return
        if (receipt.receipt_id, receipt.charged, receipt.held, receipt.session_id) != \
                (e["receipt"], e["charged"], e["held"], e["session"]):
            v.append(f"receipt of {e['auth']}: {receipt.receipt_id} charged {receipt.charged} "
                     f"held {receipt.held}; acknowledged {e['receipt']} charged "
                     f"{e['charged']} held {e['held']}")

    async def async_checks(self, open_sessions: list[dict], grants: list[dict]) -> None:
        """Open sessions still carry every acknowledged charge (read by resuming), and a
        second open of every redeemed voucher is refused."""
        v = self.violations
        key, worker_id = self.creds["worker_api_key"], self.worker_id
        limit = asyncio.Semaphore(16)
        async with grpc.aio.insecure_channel(self.broker.target) as ch:

            async def still_open(e: dict) -> None:
                async with limit:
                    try:
                        session = await MeteringSession.resume(ch, key, e["session"], worker_id)
                    except (grpc.RpcError, SessionClosed) as error:
                        v.append(f"session {e['session']}: resume failed: {classify(error)[1]}")
                        return
                    except AlreadySettled:
                        v.append(f"session {e['session']}: settled, acknowledged open")
                        return
                    grant = session.grant
                    await session.abandon()
                    if grant.charged < e["charged"] or grant.last_seq < e["seq"]:
                        v.append(f"session {e['session']}: charged {grant.charged} at seq "
                                 f"{grant.last_seq}; acknowledged {e['charged']} at seq "
                                 f"{e['seq']}")

            async def second_open(e: dict) -> None:
                async with limit:
                    try:
                        session = await MeteringSession.open(ch, key, e["voucher"], worker_id,
                                                             model="tiny-lm", request_id=rid())
                    except (grpc.RpcError, SessionClosed) as error:
                        reason = classify(error)[1]
                        expired = e["expire_ms"] <= time.time() * 1000
                        if reason == "VOUCHER_ALREADY_REDEEMED" or \
                                (expired and reason == "VOUCHER_EXPIRED"):
                            return
                        v.append(f"voucher {e['voucher_id']}: second open answered {reason}")
                        return
                    v.append(f"voucher {e['voucher_id']}: redeemed twice (sessions "
                             f"{e['session']} and {session.session_id})")
                    await session.abandon()

            await asyncio.gather(*(still_open(e) for e in open_sessions),
                                 *(second_open(e) for e in grants))

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for broker in self.brokers:
            if broker.proc is not None and broker.proc.poll() is None:
                broker.kill()
        if self.cluster is not None:
            log = self.cluster.log
            if log.exists():
                shutil.copyfile(log, self.work / "postgresql.log")
            self.cluster.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs to deliver (30)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (4)")
    parser.add_argument("--store", choices=("lmdb", "postgresql"), default="lmdb",
                        help="lmdb: one broker on its data directory; postgresql: --brokers "
                             "brokers on one throwaway PostgreSQL, and the kills take "
                             "brokers and the database (lmdb)")
    parser.add_argument("--brokers", type=int, default=3,
                        help="brokers on the database with --store postgresql (3)")
    parser.add_argument("--processes", type=int, default=1,
                        help="server processes of the broker; above 1, each kill takes the "
                             "whole process group (1)")
    parser.add_argument("--lanes", type=int, default=LANES,
                        help=f"concurrent flows per client ({LANES})")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--work-dir", help="where data, logs and client logs go "
                                           "(default: a temporary directory)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory even when the run passes")
    parser.add_argument("--verbose", "-v", action="store_true", help="progress on stderr")
    parser.add_argument("--client-config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_config:
        return client_main(args.client_config)
    if args.seed is None:
        args.seed = random.randrange(2**32)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="crash-test-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = Run(args, work)
    operations = acknowledged = 0
    try:
        operations, acknowledged = run.run()
    except Exception as error:  # noqa: BLE001 - reported as a violation below
        where = traceback.extract_tb(error.__traceback__)[-1]
        run.violations.append(f"harness error at line {where.lineno} ({where.line}): "
                              f"{error!r}")
    finally:
        run.cleanup()
    ok = not run.violations and run.kills >= args.kills
    for problem in run.violations[:50]:
        print(f"violation: {problem}", file=sys.stderr)
    if len(run.violations) > 50:
        print(f"... and {len(run.violations) - 50} more", file=sys.stderr)
    stats = getattr(run, "client_stats", [])
    refused = sum((Counter(s["refused"]) for s in stats), Counter())
    transient = sum((Counter(s["transient"]) for s in stats), Counter())
    flows = sum((Counter(s["flows"]) for s in stats), Counter())
    print(f"seed={args.seed} work_dir={work} elapsed={time.monotonic() - started:.0f}s "
          f"authorizations={getattr(run, 'authorizations', 0)} "
          f"startup_kills={run.startup_kills} "
          f"released_at_start={run.released_at_start} flows={dict(flows)} "
          f"retries={sum(s['retries'] for s in stats)} "
          f"gave_up={sum(s['gave_up'] for s in stats)} refused={dict(refused)} "
          f"transient={dict(transient.most_common(8))}", file=sys.stderr)
    if args.store == "postgresql":
        print(f"crash-test: store=postgresql brokers={args.brokers} "
              f"broker_kills={run.broker_kills} database_kills={run.database_kills}",
              flush=True)
    print(f"crash-test: kills={run.kills} operations={operations} "
          f"acknowledged={acknowledged} violations={len(run.violations)}", flush=True)
    if ok and not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
