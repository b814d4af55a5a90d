"""`broker serve --processes 2`: two server processes on one port (SO_REUSEPORT) and one
LMDB environment. A retried call or a resumed session may land on the other process and
must get the same answer; worker liveness is shared; concurrent writes from both
processes keep the ledger consistent.

Which process serves a connection is the kernel's choice, so the tests open connections
until they have one to each server process, found from /proc (Linux): the server-side
socket of our connection is in exactly one process's fd table."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from worker.broker_link import MeteringSession

from .broker_process import ROOT, BrokerProcess, free_port
from .conftest import WALLET_START, Harness, rid, rpc_error
from .spend_helpers import set_policy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="finds the serving process through /proc")

OWN_CHANNEL = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def _tcp(port: int) -> tuple[dict[int, int], dict[int, int]]:
    """Established connections to `port`: (client port -> inode, client port -> server
    socket inode)."""
    clients, servers = {}, {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state != "01":  # ESTABLISHED
                continue
            local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if remote_port == port:
                clients[local_port] = inode
            elif local_port == port:
                servers[remote_port] = inode
    return clients, servers


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


class Prefork:
    """A `--processes 2` broker and a way to reach each of its server processes."""

    def __init__(self, broker: BrokerProcess):
        self.broker = broker
        self.port = broker.port
        deadline = time.monotonic() + 30
        while True:
            self.servers = _children(broker.proc.pid)
            if len(self.servers) == 2 and all(self._listening(p) for p in self.servers):
                break
            assert time.monotonic() < deadline, f"servers did not start:\n{broker.log()}"
            time.sleep(0.1)
        self.channels: list[grpc.Channel] = []

    def _listening(self, pid: int) -> bool:
        # Each server has bound its own listening socket (SO_REUSEPORT) on the port.
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == self.port:
                    listening.add(int(fields[9]))
        return bool(listening & _socket_inodes(pid))

    def _our_ports(self) -> set[int]:
        ours = _socket_inodes(os.getpid())
        return {p for p, inode in _tcp(self.port)[0].items() if inode in ours}

    def _owner_of_new_connection(self, before: set[int]) -> int:
        """The server pid of the one connection we opened since `before`."""
        new = self._our_ports() - before
        assert len(new) == 1, f"expected one new connection, found {new}"
        server_inode = _tcp(self.port)[1][new.pop()]
        for pid in self.servers:
            if server_inode in _socket_inodes(pid):
                return pid
        raise AssertionError("no server process owns the connection")

    def channel_to(self, pid: int) -> grpc.Channel:
        """A sync channel whose connection is served by server process `pid`."""
        for _ in range(200):
            before = self._our_ports()
            channel = grpc.insecure_channel(self.broker.target, options=OWN_CHANNEL)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            if self._owner_of_new_connection(before) == pid:
                self.channels.append(channel)
                return channel
            channel.close()
        raise AssertionError(f"no connection landed on {pid}")

    async def aio_channel_to(self, pid: int) -> grpc.aio.Channel:
        """The same for grpc.aio (metering streams)."""
        for _ in range(200):
            before = self._our_ports()
            channel = grpc.aio.insecure_channel(self.broker.target, options=OWN_CHANNEL)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=10)
            if self._owner_of_new_connection(before) == pid:
                return channel
            await channel.close()
        raise AssertionError(f"no connection landed on {pid}")

    def harnesses(self) -> tuple[Harness, Harness]:
        first, second = self.servers
        return (Harness(self.broker, self.channel_to(first)),
                Harness(self.broker, self.channel_to(second)))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


@pytest.fixture
def prefork(tmp_path):
    broker = BrokerProcess(tmp_path / "data", extra_args=("--processes", "2")).start()
    world = Prefork(broker)
    yield world
    world.close()
    assert broker.stop() == 0, broker.log()
    # SIGTERM to the parent stopped every server process.
    for pid in world.servers:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_retried_authorize_on_another_process_gets_the_first_answer(prefork):
    a, b = prefork.harnesses()
    first = a.agent.authorize(55_000, ttl_seconds=300, request_id="retry-1")
    snapshot = a.snapshot()
    again = b.agent.authorize(55_000, ttl_seconds=300, request_id="retry-1")
    assert again == first  # same authorization, same voucher
    assert b.snapshot() == snapshot
    assert b.wallet().pending == 55_000
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED"):
        b.agent.authorize(55_001, ttl_seconds=300, request_id="retry-1")
    assert a.snapshot() == snapshot


def test_a_session_resumes_on_another_process(prefork):
    a, b = prefork.harnesses()
    worker_id = a.register_worker(gpu_second_price=1_000)
    auth = a.agent.authorize(4_000_000, ttl_seconds=300)  # far from STOP
    first, second = prefork.servers
    key = a.creds["worker_api_key"]

    async def scenario():
        on_a = await prefork.aio_channel_to(first)
        on_b = await prefork.aio_channel_to(second)
        try:
            session = await MeteringSession.open(on_a, key, auth.voucher, worker_id,
                                                 request_id="open-1")
            ack = await session.report({"gpu_ms": 2_000})
            assert ack.charged == 2_000
            await session.abandon()  # the connection to process A is gone; resume on B
            resumed = await MeteringSession.resume(on_b, key, session.session_id, worker_id)
            assert resumed.grant.last_seq == 1
            assert resumed.grant.charged == 2_000
            ack = await resumed.report({"gpu_ms": 5_000})
            assert (ack.seq, ack.charged) == (2, 5_000)
            receipt = await resumed.finish({"gpu_ms": 6_000})
            return session.session_id, receipt
        finally:
            await on_a.close()
            await on_b.close()

    session_id, receipt = asyncio.run(scenario())
    assert receipt.session_id == session_id
    assert receipt.charged == 6_000
    assert receipt.released == 4_000_000 - 6_000
    # Both processes see the settled session and the same ledger.
    assert a.owner.get_authorization(auth.authorization_id) == \
        b.owner.get_authorization(auth.authorization_id)
    assert b.agent.get_authorization(auth.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_SETTLED
    assert list(a.summary().violations) == []


def test_a_heartbeat_to_one_process_counts_in_the_offers_of_the_other(prefork):
    a, b = prefork.harnesses()
    worker_id = a.register_worker()  # registering is the first heartbeat, on A

    def offered(h: Harness) -> bool:
        offers = h.agent.registry.ListOffers(registry_pb.ListOffersRequest()).offers
        return worker_id in {o.worker_id for o in offers}

    assert offered(a) and offered(b)
    b.worker.registry.Heartbeat(registry_pb.HeartbeatRequest(worker_id=worker_id))
    assert offered(a)
    b.worker.registry.DeregisterWorker(registry_pb.DeregisterWorkerRequest(
        request_id=rid(), worker_id=worker_id))
    assert not offered(a) and not offered(b)


def test_concurrent_writes_from_both_processes_keep_the_ledger_consistent(prefork):
    a, b = prefork.harnesses()
    amounts = list(range(1_000, 1_060))

    def authorize(i: int):
        client = (a if i % 2 else b).agent
        return client.authorize(amounts[i], ttl_seconds=300)

    with ThreadPoolExecutor(16) as pool:
        auths = list(pool.map(authorize, range(len(amounts))))
    assert len({x.authorization_id for x in auths}) == len(amounts)
    assert a.wallet().pending == sum(amounts)
    assert a.wallet().posted == WALLET_START
    assert list(b.summary().violations) == []


def test_a_second_broker_cannot_join_the_port_or_the_data_dir(prefork, tmp_path):
    def second(data_dir: Path, listen: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "broker.cli", "serve", "--data-dir", str(data_dir),
             "--listen", listen, "--demo", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=30)

    same_port = second(tmp_path / "other", prefork.broker.target, "--processes", "2")
    assert same_port.returncode == 2, same_port.stderr
    assert "is another broker running?" in same_port.stderr
    single = second(tmp_path / "other", prefork.broker.target)
    assert single.returncode == 2, single.stderr
    same_dir = second(prefork.broker.data_dir, f"127.0.0.1:{free_port()}", "--processes", "2")
    assert same_dir.returncode == 2, same_dir.stderr
    assert f"pid {prefork.broker.proc.pid}" in same_dir.stderr
    assert "Traceback" not in same_port.stderr + single.stderr + same_dir.stderr
    assert prefork.broker.proc.poll() is None
    a, _ = prefork.harnesses()
    assert a.agent.balance().posted == WALLET_START


def test_a_server_that_dies_stops_the_broker(tmp_path):
    broker = BrokerProcess(tmp_path / "data", extra_args=("--processes", "2")).start()
    world = Prefork(broker)
    try:
        os.kill(world.servers[1], signal.SIGKILL)
        assert broker.proc.wait(20) == 1
        assert "exited with -9; stopping the others" in broker.log()
    finally:
        world.close()
        broker.stop()


def test_a_request_rate_limit_holds_across_the_processes(prefork):
    a, b = prefork.harnesses()
    # One request a minute, bursts of two: no token comes back during the test.
    set_policy(a, a.owner, a.wallet_id,
               rate_limits=pol_pb.RateLimits(requests_per_minute=1, burst=2))
    a.agent.balance()
    b.agent.balance()
    for h in (a, b):  # the bucket is empty, whichever process answers
        with rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"):
            h.agent.balance()


def test_a_key_rotated_on_one_process_signs_and_verifies_on_the_other(prefork):
    a, b = prefork.harnesses()
    worker_id = a.register_worker()
    rotated = a.admin.keys.RotateVoucherKey(keys_pb.RotateVoucherKeyRequest(request_id=rid()))
    new_key = rotated.key.key_id

    def active(h: Harness) -> str:
        keys = h.anon.keys.ListVoucherKeys(keys_pb.ListVoucherKeysRequest()).keys
        return next(k.key_id for k in keys if k.active)

    deadline = time.monotonic() + 20
    while active(b) != new_key:  # within one sweep interval
        assert time.monotonic() < deadline, "process B kept the old key"
        time.sleep(0.1)
    on_b = b.agent.authorize(50_000, ttl_seconds=300)
    assert on_b.voucher.split(".")[1] == new_key
    on_a = a.agent.authorize(50_000, ttl_seconds=300)
    assert on_a.voucher.split(".")[1] == new_key

    async def redeem_on_b() -> str:
        channel = await prefork.aio_channel_to(prefork.servers[1])
        try:
            session = await MeteringSession.open(channel, b.creds["worker_api_key"],
                                                 on_a.voucher, worker_id)
            await session.abandon()
            return session.session_id
        finally:
            await channel.close()

    assert asyncio.run(redeem_on_b()).startswith("ses_")
    assert b.agent.get_authorization(on_a.authorization_id).state == \
        auth_pb.AUTHORIZATION_STATE_REDEEMED


def _closing_on(port: int) -> list[str]:
    """States of the sockets on `port` that a killed server left closing (FIN-WAIT,
    TIME-WAIT): a plain bind() of the port fails while any is there."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] in ("04", "05", "06"):
                found.append(fields[3])
    return found


def test_killed_with_its_whole_process_group_it_restarts_at_once(tmp_path):
    """A power cut or an OOM kill of the prefork broker's cgroup, with clients connected:
    the port's old connections sit in TIME-WAIT, and the broker must start again at
    once anyway (a supervisor restarts it)."""
    broker = BrokerProcess(tmp_path / "data", extra_args=("--processes", "2"),
                           own_group=True).start()
    world = Prefork(broker)
    again = None
    try:
        a, b = world.harnesses()  # one open connection to each server process
        auth = a.agent.authorize(50_000, ttl_seconds=300)
        assert b.agent.get_authorization(auth.authorization_id).amount == 50_000
        broker.kill()  # SIGKILL to the parent and both servers at once
        deadline = time.monotonic() + 10
        while not _closing_on(broker.port):  # the clients answer the servers' FIN
            assert time.monotonic() < deadline, "no connection left closing on the port"
            time.sleep(0.01)
        broker.start()
        again = Prefork(broker)
        c, d = again.harnesses()
        assert c.agent.get_authorization(auth.authorization_id).state == \
            auth_pb.AUTHORIZATION_STATE_HELD
        assert d.agent.balance().pending == 50_000
        assert list(c.summary().violations) == []
    finally:
        world.close()
        if again is not None:
            again.close()
        code = broker.stop()
    assert code == 0, broker.log()
