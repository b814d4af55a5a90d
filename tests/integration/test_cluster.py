"""Several brokers on one PostgreSQL database, as real processes: `make cluster`'s
script, and clients and a worker that know every broker and fail over when one dies."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from broker.client import BrokerClient
from broker.v1 import authorization_service_pb2 as auth_pb
from common.money import charge_for
from worker.config import DEFAULT_PRICES
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .broker_process import ROOT, BrokerProcess, free_port
from .conftest import Harness, burn_job, usage_dict
from .test_node_agent import node_agent  # noqa: F401 - the fixture that runs agent.js
from .worker_process import WorkerProcess

SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED


def _pids_listening_with(argument: str) -> list[int]:
    """The processes whose command line holds `argument` (a broker's --listen)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv and any(b"broker" in a for a in argv[:3]):
            found.append(int(proc.name))
    return found


def _port_open(address: str) -> bool:
    import socket

    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_make_cluster_serves_through_any_broker_and_stops_in_order(tmp_path: Path):
    listens = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    metrics = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    worker_listen = f"127.0.0.1:{free_port()}"
    data = tmp_path / "var"
    log = open(tmp_path / "cluster.log", "w+")  # noqa: SIM115 - closed below
    script = subprocess.Popen(
        [sys.executable, "scripts/run_cluster.py", "--data-dir", str(data),
         "--listen", ",".join(listens), "--metrics-listen", ",".join(metrics),
         "--worker-listen", worker_listen,
         "--worker-metrics-listen", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while "brokers: " not in (tmp_path / "cluster.log").read_text():
            assert script.poll() is None, (tmp_path / "cluster.log").read_text()
            assert time.monotonic() < deadline, "the cluster did not start"
            time.sleep(0.5)
        text = (tmp_path / "cluster.log").read_text()
        pg_root = re.search(r"PostgreSQL: on a Unix socket in (\S+)", text).group(1)
        assert Path(pg_root).is_dir()
        credentials = json.loads((data / "demo-credentials.json").read_text())
        assert {"owner_id", "wallet_id", "provider_id", "admin_api_key", "owner_api_key",
                "agent_api_key", "worker_api_key"} <= set(credentials)

        def buy(target: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "examples/demo_agent.py", "--broker", target,
                 "--credentials", str(data / "demo-credentials.json")],
                cwd=ROOT, capture_output=True, text=True, timeout=120)

        def buy_when_offered(target: str) -> str:
            """Buy once the worker's heartbeat has reached the broker the agent is on."""
            deadline = time.monotonic() + 60
            while (done := buy(target)).returncode != 0:
                assert "no live worker" in done.stderr, done.stdout + done.stderr
                assert time.monotonic() < deadline, done.stdout + done.stderr
                time.sleep(1)
            return done.stdout

        assert "JOB_STATUS_COMPLETED" in buy_when_offered(",".join(listens))
        # Through each broker alone, at once: the ledger and the worker's lease (its
        # heartbeats reach only the broker its channel picked) are in the database.
        for listen in listens:
            done = buy(listen)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "JOB_STATUS_COMPLETED" in done.stdout
        # kill -9 the first broker: the others keep serving, whoever was on it (the
        # worker and the agent spread over the list: perhaps nobody, by chance; the
        # failover itself is the next test's) moves to them, the ledger is whole.
        (victim,) = _pids_listening_with(listens[0])
        os.kill(victim, signal.SIGKILL)
        assert "JOB_STATUS_COMPLETED" in buy_when_offered(",".join(listens))
        with grpc.insecure_channel(listens[1]) as channel:
            summary = Harness(_Known(data), channel).summary()
        assert list(summary.violations) == []
        # Ctrl-C: everything stops, the worker first, the database last (its files gone).
        script.send_signal(signal.SIGINT)
        assert script.wait(90) == 0
        for address in (*listens, worker_listen):
            assert not _port_open(address), address
        assert not Path(pg_root).exists()
        assert _pids_listening_with(listens[1]) == []
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(10)
        log.close()


class _Known:
    """What Harness needs of a broker it did not start: the demo credentials."""

    def __init__(self, data: Path):
        self.credentials = json.loads((data / "demo-credentials.json").read_text())
        self.target = ""


def test_worker_and_client_fail_over_when_a_broker_dies_mid_job(tmp_path: Path, pg_url: str,
                                                                 node_agent):  # noqa: F811
    keys = tmp_path / "keys"  # the key directory every broker mounts
    brokers = []
    for name in ("a", "b", "c"):
        broker = BrokerProcess(keys, extra_args=("--store", pg_url))
        broker.log_path = tmp_path / f"{name}.log"
        brokers.append(broker.start())
    everyone = ",".join(b.target for b in brokers)
    creds = brokers[0].credentials
    # Both keep to the first broker in the list (not a random one), so that the one
    # killed below is the one they are on.
    worker = WorkerProcess(everyone, tmp_path / "worker", creds["worker_api_key"],
                           creds["agent_api_key"], config={"broker_order": "listed"})
    agent = BrokerClient(everyone, creds["agent_api_key"], broker_order="listed")
    try:
        worker.start()
        held = 1_000_000
        auth = agent.authorize(held, worker_id=worker.worker_id, ttl_seconds=120)
        outcome: dict = {}

        def run_job():
            try:
                with grpc.insecure_channel(worker.target) as channel:
                    outcome["events"] = list(worker_grpc.WorkerServiceStub(channel).Execute(
                        worker_pb.ExecuteRequest(voucher=auth.voucher, job=burn_job(6_000)),
                        timeout=90))
            except grpc.RpcError as error:
                outcome["error"] = error

        thread = threading.Thread(target=run_job)
        thread.start()
        time.sleep(2)
        # The worker's channel holds to the first broker in its list: that one dies.
        brokers[0].kill()
        thread.join(90)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["events"][-1].result
        # It resumed its metering session on another broker and settled it there.
        assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
        # Charged on the usage the worker measured to the end (CPU time here: how much
        # of it a loaded machine gives the job varies, so no bound on it).
        assert result.usage.gpu_ms > 0
        assert result.receipt.charged == charge_for(usage_dict(result.usage), DEFAULT_PRICES)
        assert brokers[0].proc.poll() is not None  # so the settlement was elsewhere
        # The agent's client fails over too; the job settled exactly once.
        state = agent.get_authorization(auth.authorization_id)
        assert state.state == SETTLED
        assert state.receipt_id == result.receipt.receipt_id
        receipt = agent.get_receipt(auth.authorization_id)
        assert receipt.receipt_id == result.receipt.receipt_id
        assert receipt.charged == result.receipt.charged > 0
        assert receipt.charged + receipt.released == held
        with grpc.insecure_channel(brokers[1].target) as channel:
            h = Harness(brokers[1], channel)
            assert h.wallet().pending == 0
            assert list(h.summary().violations) == []
        # The Node.js agent, given the list whose first broker is dead, buys a job.
        done = node_agent("--broker", everyone, "--broker-order", "listed", "--credentials",
                          str(brokers[0].credentials_path), "--tokens", "4")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"^job JOB_STATUS_COMPLETED: ", done.stdout, re.M), done.stdout
        authorization_id = re.search(r"^authorized \d+: (auth_\w+)", done.stdout, re.M)[1]
        assert agent.get_authorization(authorization_id).state == SETTLED
        with grpc.insecure_channel(brokers[2].target) as channel:
            assert list(Harness(brokers[2], channel).summary().violations) == []
    finally:
        agent.close()
        worker.stop()
        for broker in brokers:
            broker.stop()


def test_two_brokers_sweeping_the_same_due_holds_resolve_each_once(tmp_path: Path,
                                                                    pg_url: str):
    """Both brokers sweep every 20 ms; the holds fall due together, so both find the
    same ones due. Each expires exactly once: one journal entry per authorization,
    the wallet whole again, the audit clean."""
    from broker.store.pg_store import PgStore

    keys = tmp_path / "keys"
    brokers = []
    for name in ("a", "b"):
        broker = BrokerProcess(keys, extra_args=("--store", pg_url,
                                                 "--sweep-interval-ms", "20"))
        broker.log_path = tmp_path / f"{name}.log"
        brokers.append(broker.start())
    creds = brokers[0].credentials
    agent = BrokerClient(brokers[0].target, creds["agent_api_key"])
    try:
        with grpc.insecure_channel(brokers[1].target) as channel:
            h = Harness(brokers[1], channel)
            before = h.wallet()
            made = [agent.authorize(10_000, ttl_seconds=1) for _ in range(40)]
            # (On a loaded machine the first may expire before the last is made.)
            deadline = time.monotonic() + 30
            while h.wallet().pending:
                assert time.monotonic() < deadline, "the holds did not expire"
                time.sleep(0.2)
            after = h.wallet()
            assert (after.posted, after.available) == (before.posted, before.available)
            expired = auth_pb.AUTHORIZATION_STATE_EXPIRED
            assert all(agent.get_authorization(a.authorization_id).state == expired
                       for a in made)
            assert list(h.summary().violations) == []
        ids = {a.authorization_id for a in made}
        store = PgStore(pg_url, pool_size=2)
        try:
            entries = store.read(lambda tx: [
                *(e for _, e in tx.scan("journal")),
                *(e for _, e in tx.scan("journal_unsealed"))])
        finally:
            store.close()
        resolved = [e["data"]["authorization_id"] for e in entries
                    if e["kind"] == "authorization_expired"
                    and e["data"]["authorization_id"] in ids]
        assert sorted(resolved) == sorted(ids)  # each once, none twice
    finally:
        agent.close()
        for broker in brokers:
            broker.stop()


def test_make_cluster_leaves_make_runs_data_directory_alone(tmp_path: Path):
    (tmp_path / "ledger").mkdir()
    (tmp_path / "admin.key").write_text("make run's\n")
    done = subprocess.run([sys.executable, "scripts/run_cluster.py", "--data-dir",
                           str(tmp_path), "--listen", f"127.0.0.1:{free_port()}",
                           "--metrics-listen", ""], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "holds an LMDB ledger" in done.stderr
    assert (tmp_path / "admin.key").read_text() == "make run's\n"
