"""JSON logs of a real broker and worker through a full cycle: every line is one JSON
object, each RPC is a line with its method, code, latency and request ids, and no
secret (API key, voucher, private key) appears anywhere."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc
from worker.v1 import worker_service_pb2 as worker_pb

from .conftest import generate_job, worker_world

JSON = ("--log-format", "json")
BAD_KEY = "cbk_not_a_real_key_but_secret_looking_" + uuid.uuid4().hex


def parse(text: str, where: str) -> list[dict]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{where} line {number} is not JSON: {line[:200]!r}")
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "msg"} <= set(entry), line
        entries.append(entry)
    return entries


def rpc_lines(entries: list[dict], method: str) -> list[dict]:
    return [e for e in entries if e["msg"] == "rpc" and e["method"] == method]


def test_json_logs_through_a_full_cycle(tmp_path):
    request_id = "req-" + uuid.uuid4().hex
    with worker_world(tmp_path, broker_args=JSON, worker_args=JSON) as w:
        auth = w.authorize(500_000, request_id=request_id)
        run = w.execute(auth.voucher, generate_job(max_new_tokens=8))
        assert run.result.status == worker_pb.JOB_STATUS_COMPLETED
        receipt = w.wait_settled(auth.authorization_id)
        with grpc.insecure_channel(w.broker.target) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            wallet_grpc.WalletServiceStub(channel).GetBalance(
                wallet_pb.GetBalanceRequest(), metadata=(("authorization", f"Bearer {BAD_KEY}"),),
                timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        secrets = [*w.api_keys, BAD_KEY, auth.voucher, *auth.voucher.split(".")[2:]]
        broker, worker = w.broker, w.worker
    # Both processes have stopped and flushed their logs.
    key_dir = broker.data_dir / "keys"
    secrets += [json.loads(p.read_text())["seed"] for p in key_dir.glob("voucher/*.json")]
    secrets += [(key_dir / "cache-scope.key").read_text().strip(),
                (worker.state_dir / "usage-key").read_text().strip()]
    assert len(secrets) >= 10 and all(len(s) >= 16 for s in secrets)

    broker_log, worker_log = broker.log(), worker.log()
    for text, where in ((broker_log, broker.log_path), (worker_log, worker.log_path)):
        leaked = [s[:10] + "..." for s in secrets if s in text]
        assert not leaked, f"secrets in {where}: {leaked}"
    broker_entries = parse(broker_log, "broker log")
    worker_entries = parse(worker_log, "worker log")

    [authorize] = rpc_lines(broker_entries, "/broker.v1.AuthorizationService/Authorize")
    assert authorize["code"] == "OK" and authorize["level"] == "info"
    assert authorize["request_id"] == request_id
    assert authorize["authorization_id"] == auth.authorization_id
    assert isinstance(authorize["duration_ms"], float) and authorize["duration_ms"] > 0

    # The worker's one metering stream (issue 21), ended when the worker stopped: it
    # names the worker, and no session (it carried any number of them).
    [meter] = rpc_lines(broker_entries, "/broker.v1.MeteringService/MeterWorker")
    assert meter["worker_id"] == w.worker_id
    assert receipt.session_id and "session_id" not in meter

    refusals = rpc_lines(broker_entries, "/broker.v1.WalletService/GetBalance")
    assert [e["code"] for e in refusals if e["code"] != "OK"] == ["UNAUTHENTICATED"]

    [execute] = rpc_lines(worker_entries, "/worker.v1.WorkerService/Execute")
    assert execute["code"] == "OK" and execute["job_id"] == run.accepted.job_id
    assert execute["duration_ms"] > 0
    assert any(e["msg"].startswith("metrics on http://127.0.0.1:") for e in worker_entries)
    assert any("registered with the broker" in e["msg"] for e in worker_entries)
    assert any(e["msg"].startswith("demo owner, wallet and keys") for e in broker_entries)
