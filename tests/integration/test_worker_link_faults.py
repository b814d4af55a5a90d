"""Faults between a worker and the broker, injected by a proxy between a real worker
daemon and a real broker: a connection that breaks under a metering stream with the
status the gRPC library makes up (INTERNAL "Internal error from Core"), and a flood of
vouchers with made-up key ids."""

import grpc
import pytest
from nacl.signing import SigningKey

from common import vouchers
from worker.v1 import worker_service_pb2 as worker_pb
from worker.voucher_check import REFRESH_BURST

from .conftest import burn_job, check_worker_error, generate_job, usage_dict
from .proxied_world import proxied_worker_world

# The per-session stream: these faults are armed per call, and a worker's one
# MeterWorker stream outlives its jobs (test_meter_worker_jobs.py kills the broker under
# it instead).
METER = "/broker.v1.MeteringService/Meter"
LIST_KEYS = "/broker.v1.VoucherKeyService/ListVoucherKeys"


@pytest.fixture(scope="module")
def p(tmp_path_factory):
    with proxied_worker_world(tmp_path_factory.mktemp("link-faults"),
                              {"batched_metering": False}) as world_and_proxy:
        yield world_and_proxy


@pytest.mark.parametrize("code,details", [
    (grpc.StatusCode.INTERNAL, "Internal error from Core"),
    (grpc.StatusCode.UNKNOWN, "Stream removed"),
])
def test_a_connection_level_failure_mid_job_is_resumed(p, code, details):
    """Issue 18, item 6: the worker resumed only on UNAVAILABLE, and failed the job on
    the INTERNAL a broken connection sometimes gives."""
    w, proxy = p
    auth = w.authorize(1_000_000)
    # The grant and the first usage ack get through, then the stream breaks.
    proxy.break_next(METER, after=2, code=code, details=details)
    run = w.execute(auth.voucher, burn_job(2_500))
    result = run.result
    assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
    assert result.receipt.outcome == "FINISHED"
    assert proxy.take_fault(METER) is None  # (the fault was used)
    assert proxy.calls(METER) >= 2  # opened, then resumed
    usage = usage_dict(result.receipt.usage)
    assert usage == usage_dict(result.usage) and usage["gpu_ms"] > 0
    assert w.state(auth.authorization_id).receipt_id == result.receipt.receipt_id
    assert w.violations() == []


def test_the_brokers_own_internal_error_is_not_resumed(p):
    """An INTERNAL the broker sent itself ("internal error", a fault of its own) would
    meet the same fault again: the job fails, and settles on what was acknowledged."""
    w, proxy = p
    auth = w.authorize(1_000_000)
    proxy.break_next(METER, after=2, code=grpc.StatusCode.INTERNAL, details="internal error")
    run = w.execute(auth.voucher, burn_job(2_500))
    assert run.result.status == worker_pb.JOB_STATUS_FAILED
    assert "the broker ended the session" in run.result.error


def test_forged_key_ids_cause_a_bounded_number_of_key_fetches(p):
    """Issue 18, item 9: each voucher with an unknown key id made the worker call
    ListVoucherKeys (20 forged key ids, 20 calls)."""
    w, proxy = p
    genuine = w.authorize(100_000)
    claims = vouchers.VoucherClaims(voucher_id="v" * 24, amount=10**6,
                                    scope={"worker_id": w.worker_id}, issued_ms=0,
                                    expire_ms=2**40)
    mallory = SigningKey.generate()
    before = proxy.calls(LIST_KEYS)
    for i in range(20):
        forged = vouchers.issue(vouchers.Signer(f"kforged{i}", mallory), claims)
        for _ in range(2):  # the same forged key id again: refused offline
            with pytest.raises(grpc.RpcError) as caught:
                w.execute(forged, generate_job())
            check_worker_error(caught.value, grpc.StatusCode.PERMISSION_DENIED,
                               "VOUCHER_UNKNOWN_KEY", "worker.v1")
    assert proxy.calls(LIST_KEYS) - before <= REFRESH_BURST + 1
    # The broker's own key is still known: the genuine voucher works.
    run = w.execute(genuine.voucher, generate_job(max_new_tokens=2))
    assert run.result.status == worker_pb.JOB_STATUS_COMPLETED
