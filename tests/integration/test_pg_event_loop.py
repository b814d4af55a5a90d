"""A broker on PostgreSQL makes no database round trip on its event loop: while one call's
statement waits on a lock this test holds (the API key check every call makes, a
worker's heartbeat lease, a rate-limited agent's request bucket), the broker still
answers other calls at once: health checks, and calls that need other tables. When the
reads ran on the loop, the whole broker waited with that one call (health included)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .conftest import Harness
from .spend_helpers import broker_harness, set_policy

HOLD_S = 3.0  # how long the test holds its lock once the broker waits on it
PROMPT_S = 0.5  # what "at once" allows a call (on an idle machine: a few ms)


@pytest.fixture
def pg(tmp_path: Path, pg_url: str) -> Iterator[Harness]:
    with broker_harness(tmp_path, "--store", pg_url) as harness:
        yield harness


def _waiting_call(h: Harness, table: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """(a call whose statement on `table` will wait, a call that needs no `table`)."""
    if table == "t_api_keys":  # every call's key check reads it
        return h.agent.balance, lambda: None
    if table == "worker_leases":  # a heartbeat renews the worker's lease there
        worker_id = h.register_worker()
        request = registry_pb.HeartbeatRequest(worker_id=worker_id)
        return lambda: h.worker.registry.Heartbeat(request, timeout=30), h.owner.balance
    assert table == "rate_buckets"  # a rate-limited key takes a token there per call
    t = h.new_tenant()
    set_policy(h, t.owner, t.wallet_id,
               rate_limits=pol_pb.RateLimits(requests_per_minute=600, burst=100))
    return t.agent.balance, h.owner.balance


@pytest.mark.parametrize("table", ["t_api_keys", "worker_leases", "rate_buckets"])
def test_a_call_waiting_on_the_database_does_not_stall_the_broker(pg: Harness, pg_url: str,
                                                                  table: str):
    waiting, other = _waiting_call(pg, table)
    health = health_pb2_grpc.HealthStub(pg.channel)
    done: dict[str, object] = {}

    def call() -> None:
        try:
            done["reply"] = waiting()
        except grpc.RpcError as error:
            done["error"] = error
        done["at"] = time.monotonic()

    with psycopg.connect(pg_url, autocommit=True) as watcher, \
            psycopg.connect(pg_url) as holder:  # a transaction: the lock lasts until commit
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        # The broker's statement is in the database, waiting for the lock.
        deadline = time.monotonic() + 10
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                                  "relation = %s::regclass", (table,)).fetchone()[0]:
            assert time.monotonic() < deadline, f"the broker never waited on {table}"
            time.sleep(0.02)
        held_at = time.monotonic()
        slowest = 0.0
        while time.monotonic() - held_at < HOLD_S:
            started = time.monotonic()
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=PROMPT_S * 4)
            other()
            slowest = max(slowest, time.monotonic() - started)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            time.sleep(0.05)
        assert caller.is_alive() and not done, "the waiting call should still be waiting"
        released_at = time.monotonic()
        holder.commit()
    caller.join(30)
    assert "error" not in done, done.get("error")
    assert done["reply"] is not None and done["at"] >= released_at  # answered, once let go
    assert slowest < PROMPT_S, f"a call took {slowest:.3f} s while {table} was locked"
