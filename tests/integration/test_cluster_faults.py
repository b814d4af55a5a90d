"""Faults under load, with real processes: three brokers on one PostgreSQL, agents
buying jobs from a worker that knows all three. One broker is killed, another hangs
(SIGSTOP) for longer than a reporting interval and comes back (SIGCONT); the database
restarts; the brokers' connections to it are cut mid-operation. Agents and the worker
carry on; nothing acknowledged is lost; every hold resolves exactly once; the audit
is clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import grpc
import psycopg
from google.rpc import error_details_pb2

from broker.client import BrokerClient, BrokerClientError
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import authorization_service_pb2_grpc as auth_grpc
from common import tls
from common.status import error_detail, error_info
from tests import pg_cluster
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .broker_process import ROOT, BrokerProcess
from .conftest import Harness, burn_job, rid
from .test_node_agent import node_agent  # noqa: F401 - the fixture that makes sure of npm ci
from .worker_process import WorkerProcess

HELD = auth_pb.AUTHORIZATION_STATE_HELD
REDEEMED = auth_pb.AUTHORIZATION_STATE_REDEEMED
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED
CANCELLED = auth_pb.AUTHORIZATION_STATE_CANCELLED
EXPIRED = auth_pb.AUTHORIZATION_STATE_EXPIRED
# The journal entries that resolve a hold: each authorization gets exactly one.
RESOLUTIONS = ("session_settled", "authorization_cancelled", "authorization_expired")
HUNG_S = 10.0  # SIGSTOP this long: ten reporting intervals, five keepalive timeouts
SHORT_TTL_S = 1
AMOUNT = 1_000  # the database faults' holds: thousands fit in the demo wallet


def start_brokers(tmp_path: Path, url: str, count: int = 3) -> list[BrokerProcess]:
    keys = tmp_path / "keys"  # the key directory every broker mounts
    brokers = []
    for name in "abc"[:count]:
        broker = BrokerProcess(keys, extra_args=("--store", url, "--sweep-interval-ms", "200"))
        broker.log_path = tmp_path / f"{name}.log"
        brokers.append(broker.start(timeout=60))
    return brokers


def stop_all(brokers: list[BrokerProcess]) -> None:
    for broker in brokers:
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)  # a hung one must hear SIGTERM
            broker.stop()


def resolutions(url: str) -> Counter:
    """How many resolving journal entries each authorization has, sealed or not."""
    from broker.store.pg_store import PgStore

    store = PgStore(url, pool_size=2)
    try:
        entries = store.read(lambda tx: [
            *(e for _, e in tx.scan("journal")), *(e for _, e in tx.scan("journal_unsealed"))])
    finally:
        store.close()
    return Counter(e["data"]["authorization_id"] for e in entries if e["kind"] in RESOLUTIONS)


def audit(keys: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker.cli", "audit", "--data-dir",
                           str(keys), "--store", url], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# -- agents ------------------------------------------------------------------------------


@dataclass
class Acked:
    kind: str  # "job", "cancel", "expire"
    authorization_id: str
    amount: int
    at: float  # time.monotonic() of the last acknowledgement
    receipt_id: str = ""
    charged: int = 0


@dataclass
class LoadThreads:
    """Threads that each run `_loop(index)` until `stop()`, which joins them all."""

    _stop: threading.Event = field(default_factory=threading.Event, kw_only=True)
    _running: list[threading.Thread] = field(default_factory=list, kw_only=True)

    def start(self) -> Self:
        for i in range(self.threads):  # type: ignore[attr-defined]
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True)
            thread.start()
            self._running.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(120)
            assert not thread.is_alive(), f"a thread of {type(self).__name__} hangs"

    def _loop(self, i: int) -> None:
        raise NotImplementedError


@dataclass
class Agents(LoadThreads):
    """Threads that each loop: buy a burn job from the worker, or authorize and cancel,
    or leave a short hold to expire. Every acknowledged outcome is kept; any failure
    (after the client's own retries) too."""

    target: str
    api_key: str
    worker: WorkerProcess
    threads: int = 3
    acked: list[Acked] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def _loop(self, i: int) -> None:
        # retries: enough to outlast a broker that hangs (each try ends within ~4 s).
        # `listed`: every agent on the first broker, then on the second (the test kills
        # the one, then hangs the other).
        client = BrokerClient(self.target, self.api_key, retries=8, broker_order="listed")
        n = 0
        try:
            while not self._stop.is_set():
                kind = ("job", "cancel", "job", "expire")[(n + i) % 4]
                n += 1
                try:
                    getattr(self, kind)(client)
                except (BrokerClientError, grpc.RpcError, AssertionError) as error:
                    self.failures.append(f"{kind}: {error!r}"[:400])
        finally:
            client.close()

    def job(self, client: BrokerClient) -> None:
        auth = client.authorize(200_000, worker_id=self.worker.worker_id, ttl_seconds=120)
        with grpc.insecure_channel(self.worker.target) as channel:
            events = list(worker_grpc.WorkerServiceStub(channel).Execute(
                worker_pb.ExecuteRequest(voucher=auth.voucher, job=burn_job(600)),
                timeout=90))
        result = events[-1].result
        assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
        self.acked.append(Acked("job", auth.authorization_id, auth.amount, time.monotonic(),
                                result.receipt.receipt_id, result.receipt.charged))

    def cancel(self, client: BrokerClient) -> None:
        auth = client.authorize(50_000, ttl_seconds=300)
        done = client.cancel(auth.authorization_id)
        assert done.state == CANCELLED, done
        self.acked.append(Acked("cancel", auth.authorization_id, auth.amount,
                                time.monotonic()))

    def expire(self, client: BrokerClient) -> None:
        auth = client.authorize(20_000, ttl_seconds=SHORT_TTL_S)
        self.acked.append(Acked("expire", auth.authorization_id, auth.amount,
                                time.monotonic()))


def check_acknowledged(agents: Agents, client: BrokerClient, url: str) -> None:
    """Every acknowledged outcome is in the ledger as acknowledged, and every hold
    of the test resolved exactly once."""
    deadline = time.monotonic() + 30
    for acked in agents.acked:
        auth = client.get_authorization(acked.authorization_id)
        while acked.kind == "expire" and auth.state == HELD:
            assert time.monotonic() < deadline, f"{acked} never expired"
            time.sleep(0.2)
            auth = client.get_authorization(acked.authorization_id)
        assert auth.amount == acked.amount, acked
        want = {"job": SETTLED, "cancel": CANCELLED, "expire": EXPIRED}[acked.kind]
        assert auth.state == want, (acked, auth)
        if acked.kind == "job":
            assert (auth.receipt_id, auth.charged) == (acked.receipt_id, acked.charged), acked
            assert 0 < auth.charged <= auth.amount
    counts = resolutions(url)
    for acked in agents.acked:
        assert counts[acked.authorization_id] == 1, (acked, counts[acked.authorization_id])
    assert max(counts.values()) == 1


# -- the tests -----------------------------------------------------------------------------


def test_brokers_killed_and_hung_under_load_lose_nothing(tmp_path: Path, pg_url: str):
    """SIGKILL the broker everyone holds to; then SIGSTOP the one they moved to, for ten
    reporting intervals, and SIGCONT it. Agents and the worker notice the hung broker
    (keepalive pings) and carry on through the third."""
    brokers = start_brokers(tmp_path, pg_url)
    everyone = ",".join(b.target for b in brokers)
    creds = brokers[0].credentials
    worker = WorkerProcess(everyone, tmp_path / "worker", creds["worker_api_key"],
                           creds["agent_api_key"],
                           config={"max_concurrent_jobs": 4, "broker_order": "listed"})
    agents = Agents(everyone, creds["agent_api_key"], worker)
    try:
        worker.start()
        agents.start()
        time.sleep(4)
        brokers[0].kill()
        killed_at = time.monotonic()
        time.sleep(4)
        os.kill(brokers[1].proc.pid, signal.SIGSTOP)
        hung_at = time.monotonic()
        time.sleep(HUNG_S)
        os.kill(brokers[1].proc.pid, signal.SIGCONT)
        back_at = time.monotonic()
        time.sleep(4)
        agents.stop()
        assert agents.failures == []
        # They carried on: jobs bought after the kill, and while the second one hung
        # (through the third alone, once the hang was noticed).
        done = Counter(a.kind for a in agents.acked)
        assert done["job"] >= 4 and done["cancel"] >= 2 and done["expire"] >= 2, done
        assert any(killed_at < a.at < hung_at and a.kind == "job" for a in agents.acked)
        assert any(hung_at + 5 < a.at < back_at and a.kind == "job" for a in agents.acked), \
            sorted((round(a.at - hung_at, 1), a.kind) for a in agents.acked)
        # The broker that hung is back and serves; the worker never stopped.
        assert brokers[1].proc.poll() is None and worker.alive()
        with BrokerClient(brokers[1].target, creds["agent_api_key"]) as on_b:
            check_acknowledged(agents, on_b, pg_url)
        for broker in brokers[1:]:
            with grpc.insecure_channel(broker.target) as channel:
                h = Harness(broker, channel)
                assert h.wallet().pending == 0
                assert list(h.summary().violations) == []
    finally:
        agents._stop.set()
        worker.stop()
        stop_all(brokers)
    done = audit(tmp_path / "keys", pg_url)
    assert done.returncode == 0, done.stdout + done.stderr


def test_node_agent_and_worker_pass_over_a_broker_that_hangs_mid_purchase(
        tmp_path: Path, pg_url: str, node_agent):  # noqa: F811
    """The Node.js agent and the worker both hold to the first of two brokers; it hangs
    (SIGSTOP) just after the agent's Authorize. The agent's next calls, and the worker's
    redemption and metering, notice (keepalive) and go to the second: the job
    completes, the receipt verifies, the hold resolves once."""
    brokers = start_brokers(tmp_path, pg_url, count=2)
    everyone = ",".join(b.target for b in brokers)
    creds = brokers[0].credentials
    worker = WorkerProcess(everyone, tmp_path / "worker", creds["worker_api_key"],
                           creds["agent_api_key"], config={"broker_order": "listed"})
    agent = None
    try:
        worker.start()
        agent = subprocess.Popen(
            ["node", str(ROOT / "examples" / "node-agent" / "agent.js"), "--broker", everyone,
             "--broker-order", "listed", "--credentials", str(brokers[0].credentials_path),
             "--tokens", "4"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert agent.stdout is not None
        seen = []
        for line in agent.stdout:
            seen.append(line)
            if line.startswith("authorized "):
                os.kill(brokers[0].proc.pid, signal.SIGSTOP)
                hung_at = time.monotonic()
                break
        else:
            raise AssertionError("".join(seen))
        out = "".join(seen) + agent.stdout.read()
        assert agent.wait(90) == 0, out
        took = time.monotonic() - hung_at
        assert re.search(r"^job JOB_STATUS_COMPLETED: ", out, re.M), out
        assert "receipt signature verified" in out, out
        authorization_id = re.search(r"^authorized \d+: (auth_\w+)", out, re.M)[1]
        with BrokerClient(brokers[1].target, creds["agent_api_key"]) as on_b:
            assert on_b.get_authorization(authorization_id).state == SETTLED
        assert resolutions(pg_url)[authorization_id] == 1
        assert took < 60, took
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        worker.stop()
        stop_all(brokers)


# -- the database goes away --------------------------------------------------------------


@dataclass
class Authorizer(LoadThreads):
    """Threads that authorize and cancel on a raw stub (to see every failure as it
    comes): an UNAVAILABLE is retried with the same request_id after the RetryInfo
    delay. Every failure is kept with its reason and whether it carried RetryInfo."""

    target: str
    api_key: str
    threads: int = 4
    answers: dict[str, str] = field(default_factory=dict)  # request_id -> authorization
    cancelled: set[str] = field(default_factory=set)
    failures: list[tuple[str, str, bool]] = field(default_factory=list)  # code, reason, retry
    gave_up: list[str] = field(default_factory=list)

    def _call(self, stub, method: str, request):
        md = (("authorization", f"Bearer {self.api_key}"),)
        deadline = time.monotonic() + 60
        while True:
            try:
                return getattr(stub, method)(request, metadata=md, timeout=10)
            except grpc.RpcError as error:
                info = error_info(error)
                retry = error_detail(error, error_details_pb2.RetryInfo)
                self.failures.append((error.code().name, info.reason if info else "",
                                      retry is not None))
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    self.gave_up.append(f"{method}: {error.code().name} {error.details()}")
                    raise
                time.sleep(retry.retry_delay.ToMilliseconds() / 1000 if retry else 0.2)

    def _loop(self, i: int) -> None:
        # The default order: the threads' channels spread over the brokers.
        with tls.broker_channel(self.target, None) as channel:
            stub = auth_grpc.AuthorizationServiceStub(channel)
            while not self._stop.is_set():
                request_id = rid()
                try:
                    made = self._call(stub, "Authorize", auth_pb.AuthorizeRequest(
                        request_id=request_id, amount=AMOUNT, ttl_seconds=600)).authorization
                    self.answers[request_id] = made.authorization_id
                    if len(self.answers) % 2:
                        self._call(stub, "CancelAuthorization",
                                   auth_pb.CancelAuthorizationRequest(
                                       request_id=rid(),
                                       authorization_id=made.authorization_id))
                        self.cancelled.add(made.authorization_id)
                except grpc.RpcError:
                    return


def check_one_true_answer(load: Authorizer, brokers: list[BrokerProcess],
                          before: set[str]) -> None:
    """Every failure the callers saw was UNAVAILABLE with STORE_UNAVAILABLE and
    RetryInfo; every request_id has one authorization, and the same request_id sent
    again to each broker gets that one back; the wallet holds exactly those."""
    assert load.gave_up == []
    assert {(code, reason, retry) for code, reason, retry in load.failures} <= {
        ("UNAVAILABLE", "STORE_UNAVAILABLE", True)}, Counter(load.failures)
    creds = brokers[0].credentials
    md = (("authorization", f"Bearer {creds['agent_api_key']}"),)
    for broker in brokers:
        with grpc.insecure_channel(broker.target) as channel:
            stub = auth_grpc.AuthorizationServiceStub(channel)
            for request_id, authorization_id in list(load.answers.items())[::7]:
                again = stub.Authorize(auth_pb.AuthorizeRequest(
                    request_id=request_id, amount=AMOUNT, ttl_seconds=600), metadata=md,
                    timeout=10).authorization
                assert again.authorization_id == authorization_id
    with grpc.insecure_channel(brokers[0].target) as channel:
        h = Harness(brokers[0], channel)
        listed, token = [], ""
        while True:
            page = h.owner.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
                wallet_id=h.wallet_id, page_size=1000, page_token=token))
            listed += page.authorizations
            if not (token := page.next_page_token):
                break
        ours = {a.authorization_id: a for a in listed if a.authorization_id not in before}
        assert set(ours) == set(load.answers.values())  # none lost, none twice
        for authorization_id, auth in ours.items():
            want = CANCELLED if authorization_id in load.cancelled else HELD
            assert auth.state == want, (authorization_id, auth.state)
        live = sum(a.amount for a in listed if a.state in (HELD, REDEEMED))
        assert h.wallet().pending == live
        assert list(h.summary().violations) == []


def authorization_ids(broker: BrokerProcess) -> set[str]:
    with grpc.insecure_channel(broker.target) as channel:
        h = Harness(broker, channel)
        page = h.owner.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
            wallet_id=h.wallet_id, page_size=1000))
        return {a.authorization_id for a in page.authorizations}


def test_database_restarted_under_three_brokers(tmp_path: Path):
    """Its own cluster, stopped (immediate: like a crash) and started again while three
    brokers take load: meanwhile they answer UNAVAILABLE with RetryInfo, and then
    serve again without being restarted."""
    cluster = pg_cluster.PgCluster().start()
    try:
        url = cluster.create_database("broker")
        brokers = start_brokers(tmp_path, url)
        pids = [b.proc.pid for b in brokers]
        creds = brokers[0].credentials
        before = authorization_ids(brokers[0])
        load = Authorizer(",".join(b.target for b in brokers), creds["agent_api_key"])
        try:
            load.start()
            time.sleep(3)
            made_before = len(load.answers)
            cluster.stop("immediate")
            time.sleep(3)
            cluster.start()
            time.sleep(5)
            made_after_restart = len(load.answers)
            load.stop()
            assert made_before > 0 and made_after_restart > made_before
            assert ("UNAVAILABLE", "STORE_UNAVAILABLE", True) in load.failures
            # The same processes, each serving again on its own.
            assert [b.proc.pid for b in brokers] == pids
            assert all(b.proc.poll() is None for b in brokers)
            for broker in brokers:
                with BrokerClient(broker.target, creds["agent_api_key"]) as alone:
                    made = alone.authorize(1_000).authorization_id
                    assert alone.cancel(made).state == CANCELLED
                    before.add(made)  # not the load's
            check_one_true_answer(load, brokers, before)
        finally:
            load._stop.set()
            stop_all(brokers)
        done = audit(tmp_path / "keys", url)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        cluster.destroy()


def test_connections_cut_mid_operation_under_three_brokers(tmp_path: Path, pg_url: str):
    """Every broker's database connections are terminated again and again while they
    take load: a caller whose operation lost its connection gets UNAVAILABLE with
    RetryInfo, and its retry with the same request_id gets the one true answer (the
    first, when the COMMIT went through before the connection went)."""
    brokers = start_brokers(tmp_path, pg_url)
    creds = brokers[0].credentials
    before = authorization_ids(brokers[0])
    load = Authorizer(",".join(b.target for b in brokers), creds["agent_api_key"])
    cuts = 0
    try:
        load.start()
        time.sleep(2)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            until = time.monotonic() + 8
            while time.monotonic() < until:
                cuts += admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()[0]
                time.sleep(0.15)
        made_during = len(load.answers)
        time.sleep(2)
        load.stop()
        assert cuts > 20 and made_during > 0 and len(load.answers) > made_during
        assert ("UNAVAILABLE", "STORE_UNAVAILABLE", True) in load.failures
        assert all(b.proc.poll() is None for b in brokers)
        check_one_true_answer(load, brokers, before)
    finally:
        load._stop.set()
        stop_all(brokers)
    done = audit(tmp_path / "keys", pg_url)
    assert done.returncode == 0, done.stdout + done.stderr
