"""The worker daemon under bad input and faults, against a real broker process:
vouchers it must refuse (and must not redeem), jobs that fail, an agent that hangs
up, and a broker that is away at redemption or dies in the middle of a job."""

import base64
import json
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from nacl.signing import SigningKey

from broker.v1 import authorization_service_pb2 as auth_pb
from common import vouchers
from common.money import charge_for
from worker.config import DEFAULT_PRICES
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .conftest import (
    DOMAIN,
    agents_copy,
    burn_job,
    check_worker_error,
    generate_job,
    handler_job,
    usage_dict,
    worker_world,
)
from .worker_process import WorkerProcess

PRICES = DEFAULT_PRICES  # this worker runs without a config file

HELD = auth_pb.AUTHORIZATION_STATE_HELD
SETTLED = auth_pb.AUTHORIZATION_STATE_SETTLED


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    with worker_world(tmp_path_factory.mktemp("worker-faults")) as world:
        yield world


def ledger(w) -> tuple:
    """What a refused job must leave exactly as it was."""
    s = w.h.summary()
    assert list(s.violations) == []
    return (s.transfer_count, s.journal_length, s.debits_pending, s.debits_posted,
            s.credits_posted)


def refused(w, voucher: str, job: worker_pb.Job, code: grpc.StatusCode, reason: str, *,
            domain: str = "worker.v1", auth: auth_pb.Authorization | None = None,
            target: str | None = None) -> grpc.RpcError:
    """Execute is refused with (code, reason), nothing changes at the broker, and the
    authorization (when there is one) is still HELD, whole; then it is cancelled."""
    before = ledger(w)
    with pytest.raises(grpc.RpcError) as caught:
        w.execute(voucher, job, target=target)
    check_worker_error(caught.value, code, reason, domain)
    assert ledger(w) == before
    if auth is not None:
        now = w.state(auth.authorization_id)
        assert (now.state, now.amount, now.charged) == (HELD, auth.amount, 0)
        w.agent.cancel(auth.authorization_id)
    return caught.value


def check_settled_on_measured_usage(w, auth, receipt, result_usage=None) -> dict:
    usage = usage_dict(receipt.usage)
    if result_usage is not None:
        assert usage == usage_dict(result_usage)
    assert receipt.charged == charge_for(usage, PRICES)
    assert receipt.released == receipt.held - receipt.charged
    assert receipt.worker_payout + receipt.platform_fee == receipt.charged
    # The worker's copy does not name the authorization; GetReceipt's does.
    mine = receipt if receipt.authorization_id else agents_copy(receipt, auth)
    assert w.agent.get_receipt(auth.authorization_id) == mine
    return usage


# -- vouchers the worker must refuse before anything is spent --------------------------


def test_voucher_pinned_to_another_worker(w):
    other = w.h.register_worker(resource_class="cpu", gpu_second_price=1000)
    assert other != w.worker_id
    auth = w.authorize(100_000, worker_id=other)
    refused(w, auth.voucher, generate_job(), grpc.StatusCode.PERMISSION_DENIED,
            "VOUCHER_SCOPE_MISMATCH", auth=auth)


def test_voucher_for_another_resource_class(w):
    auth = w.authorize(100_000, worker_id="", resource_class="gpu.h100")
    refused(w, auth.voucher, generate_job(), grpc.StatusCode.PERMISSION_DENIED,
            "VOUCHER_SCOPE_MISMATCH", auth=auth)


def test_voucher_for_another_model(w):
    auth = w.authorize(100_000, model="tiny-lm")
    refused(w, auth.voucher, generate_job(model="other-lm"),
            grpc.StatusCode.PERMISSION_DENIED, "VOUCHER_SCOPE_MISMATCH", auth=auth)


def test_price_cap_below_the_workers_price(w):
    cap = {"gpu_second_price": PRICES["gpu_second_price"] - 1}
    auth = w.authorize(100_000, max_prices=cap)
    refused(w, auth.voucher, generate_job(), grpc.StatusCode.PERMISSION_DENIED,
            "PRICE_ABOVE_SCOPE", auth=auth)
    # A cap equal to every price is fine.
    auth = w.authorize(100_000, max_prices=dict(PRICES))
    run = w.execute(auth.voucher, generate_job(max_new_tokens=2))
    assert run.result.status == worker_pb.JOB_STATUS_COMPLETED


def test_expired_voucher(w):
    auth = w.authorize(100_000, ttl_seconds=1)
    # The broker releases the hold on its own once it times out; nothing was redeemed.
    expired = w.h.wait_for_state(auth.authorization_id, auth_pb.AUTHORIZATION_STATE_EXPIRED)
    assert (expired.state, expired.charged) == (auth_pb.AUTHORIZATION_STATE_EXPIRED, 0)
    assert w.h.wallet().pending == 0
    # Only then compare the ledger: the expiry sweep must not race the snapshot.
    refused(w, auth.voucher, generate_job(), grpc.StatusCode.FAILED_PRECONDITION,
            "VOUCHER_EXPIRED")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_forged_vouchers(w):
    auth = w.authorize(100_000)
    version, key_id, claims_b64, signature = auth.voucher.split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=" * (-len(claims_b64) % 4)))
    # 1. Real signature, claims edited: a bigger amount.
    bigger = _b64(json.dumps({**claims, "amt": claims["amt"] * 100}).encode())
    refused(w, f"{version}.{key_id}.{bigger}.{signature}", generate_job(),
            grpc.StatusCode.PERMISSION_DENIED, "VOUCHER_INVALID_SIGNATURE")
    # 2. Signed by someone else's key under the broker's key id.
    forged = vouchers.VoucherClaims(
        voucher_id=claims["vid"], amount=10**9, scope={"worker_id": w.worker_id},
        issued_ms=claims["iat"], expire_ms=claims["exp"])
    mallory = SigningKey.generate()
    refused(w, vouchers.issue(vouchers.Signer(key_id, mallory), forged), generate_job(),
            grpc.StatusCode.PERMISSION_DENIED, "VOUCHER_INVALID_SIGNATURE")
    # 3. Signed by a key the broker never published.
    refused(w, vouchers.issue(vouchers.Signer("kmallory", mallory), forged), generate_job(),
            grpc.StatusCode.PERMISSION_DENIED, "VOUCHER_UNKNOWN_KEY")
    # 4. Not a voucher at all.
    refused(w, "v1.nothing", generate_job(), grpc.StatusCode.INVALID_ARGUMENT,
            "VOUCHER_MALFORMED")
    # The genuine voucher was never touched, and still works.
    now = w.state(auth.authorization_id)
    assert (now.state, now.amount) == (HELD, 100_000)
    run = w.execute(auth.voucher, generate_job(max_new_tokens=2))
    assert run.result.status == worker_pb.JOB_STATUS_COMPLETED
    assert run.result.receipt.held == 100_000


def test_same_voucher_twice(w):
    auth = w.authorize(100_000)
    first = w.execute(auth.voucher, generate_job(max_new_tokens=4))
    assert first.result.status == worker_pb.JOB_STATUS_COMPLETED
    receipt = first.result.receipt
    # Passed through from the broker unchanged (its domain, not the worker's).
    refused(w, auth.voucher, generate_job(max_new_tokens=4),
            grpc.StatusCode.FAILED_PRECONDITION, "VOUCHER_ALREADY_REDEEMED", domain=DOMAIN)
    assert w.agent.get_receipt(auth.authorization_id) == agents_copy(receipt,
                                                                      auth)


def test_unknown_model_and_bad_jobs(w):
    auth = w.authorize(100_000)  # no model in the scope
    refused(w, auth.voucher, generate_job(model="gpt-17"), grpc.StatusCode.FAILED_PRECONDITION,
            "MODEL_NOT_AVAILABLE", auth=auth)
    for job in (worker_pb.Job(), burn_job(0), generate_job(max_new_tokens=5000),
                handler_job("not a path")):
        auth = w.authorize(100_000)
        refused(w, auth.voucher, job, grpc.StatusCode.INVALID_ARGUMENT, "JOB_INVALID",
                auth=auth)


# -- jobs that end badly: only measured usage is charged --------------------------------


def test_handler_exception_fails_the_job_and_charges_measured_usage(w):
    held = 100_000
    auth = w.authorize(held)
    run = w.execute(auth.voucher, handler_job("worker.runtime.example_handlers:fail", b"x"))
    assert run.kinds()[0] == "accepted" and run.outputs == []
    result = run.result
    assert result.status == worker_pb.JOB_STATUS_FAILED
    assert result.error == "handler raised ValueError: this handler always fails"
    assert "Traceback" not in result.error
    usage = check_settled_on_measured_usage(w, auth, result.receipt, result.usage)
    assert usage["calls"] == 1 and usage["input_tokens"] == usage["output_tokens"] == 0
    assert 0 < result.receipt.charged < held // 10
    assert w.state(auth.authorization_id).state == SETTLED


def test_handler_off_the_allow_list_never_runs(w, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    held = 100_000
    auth = w.authorize(held)
    try:
        run = w.execute(auth.voucher, handler_job("shutil:rmtree", str(victim).encode()))
    except grpc.RpcError as error:  # refusing it up front is fine too
        check_worker_error(error, grpc.StatusCode.INVALID_ARGUMENT, "JOB_INVALID")
        assert w.state(auth.authorization_id).state == HELD
    else:
        result = run.result
        assert result.status == worker_pb.JOB_STATUS_FAILED
        assert result.error == "unknown handler 'shutil:rmtree'"
        usage = check_settled_on_measured_usage(w, auth, result.receipt, result.usage)
        assert usage["input_tokens"] == usage["output_tokens"] == 0
        assert result.receipt.charged < held // 10
    assert (victim / "data").read_text() == "keep me"


def test_allowed_handler_runs(w):
    auth = w.authorize(100_000)
    run = w.execute(auth.voucher, handler_job("worker.runtime.example_handlers:echo",
                                              b"pay per word"))
    assert [o.text for o in run.outputs] == ["PAY", " PER", " WORD"]
    result = run.result
    assert result.status == worker_pb.JOB_STATUS_COMPLETED
    assert json.loads(result.result_json) == {"result": {"words": 3}}
    usage = check_settled_on_measured_usage(w, auth, result.receipt, result.usage)
    assert (usage["input_tokens"], usage["output_tokens"], usage["calls"]) == (3, 3, 1)


def test_agent_hangs_up_mid_stream(w):
    held = 1_000_000
    auth = w.authorize(held)
    busy = w.authorize(100_000)
    request = worker_pb.ExecuteRequest(voucher=auth.voucher,
                                       job=generate_job("long " * 10, 4096))
    received = 0
    with grpc.insecure_channel(w.worker.target) as ch:
        call = worker_grpc.WorkerServiceStub(ch).Execute(request, timeout=60)
        for event in call:
            received += event.WhichOneof("kind") == "output"
            if received == 10:
                break
        # One job at a time: a second agent is turned away and nothing is spent.
        refused(w, busy.voucher, generate_job(), grpc.StatusCode.RESOURCE_EXHAUSTED,
                "WORKER_BUSY")
        call.cancel()
        cancelled = time.monotonic()
    # The job stops and the session is settled on what was measured.
    receipt = w.wait_settled(auth.authorization_id, timeout=5)
    assert time.monotonic() - cancelled < 5
    usage = check_settled_on_measured_usage(w, auth, receipt)
    assert received <= usage["output_tokens"] < 2048, usage
    assert usage["input_tokens"] == len("long " * 10) and usage["calls"] == 1
    assert 0 < receipt.charged < held
    assert w.h.wallet().pending == w.state(busy.authorization_id).amount
    # The slot is free again: the agent that was turned away can run now.
    run = w.execute(busy.voucher, generate_job(max_new_tokens=3))
    assert run.result.status == worker_pb.JOB_STATUS_COMPLETED
    assert w.violations() == []


def test_every_hang_up_is_settled_at_once(w):
    """Hang-ups at many points of the stream. One that lands while grpc is still sending
    the previous event reaches the worker as a closed generator rather than a cancelled
    task (a few percent of hang-ups, more on a loaded machine); it must stop the job and
    settle just the same, not leave the hold to expire."""
    for tokens, pause in [(k, 0.01 * (k % 4)) for k in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)]:
        auth = w.authorize(100_000)
        request = worker_pb.ExecuteRequest(voucher=auth.voucher, job=generate_job("x", 1000))
        received = 0
        with grpc.insecure_channel(w.worker.target) as ch:
            call = worker_grpc.WorkerServiceStub(ch).Execute(request, timeout=60)
            for event in call:
                received += event.WhichOneof("kind") == "output"
                if received == tokens:
                    break
            time.sleep(pause)
            call.cancel()
        receipt = w.wait_settled(auth.authorization_id, timeout=5)
        usage = check_settled_on_measured_usage(w, auth, receipt)
        assert receipt.outcome == "FINISHED", (tokens, receipt.outcome)
        assert tokens <= usage["output_tokens"] < 1000, (tokens, usage)
    assert w.h.wallet().pending == 0


def test_worker_log_holds_no_secrets(w):
    """Runs last in this module: after refusals, forgeries and failures."""
    assert len(w.vouchers) >= 15
    w.check_log_privacy()


# -- the broker goes away ----------------------------------------------------------------


def test_broker_unreachable_at_redemption(tmp_path):
    with worker_world(tmp_path) as w:
        # `w.worker` has checked a voucher before (it holds the broker's keys); `fresh`
        # never has, so it must fetch them and cannot.
        assert w.execute(w.authorize(100_000).voucher, generate_job(max_new_tokens=2)) \
            .result.status == worker_pb.JOB_STATUS_COMPLETED
        fresh = WorkerProcess(w.broker.target, tmp_path / "fresh", w.creds["worker_api_key"],
                              w.creds["agent_api_key"]).start()
        try:
            auths = [(w.worker, w.authorize(100_000)),
                     (fresh, w.authorize(100_000, worker_id=fresh.worker_id))]
            before = ledger(w)
            w.broker.kill()
            for worker, auth in auths:
                with pytest.raises(grpc.RpcError) as caught:
                    w.execute(auth.voucher, generate_job(), target=worker.target)
                check_worker_error(caught.value, grpc.StatusCode.UNAVAILABLE,
                                   "BROKER_UNAVAILABLE")
            w.restart_broker()
            assert ledger(w) == before
            for worker, auth in auths:
                now = w.state(auth.authorization_id)
                assert (now.state, now.charged) == (HELD, 0)
                assert worker.alive()
            # Both serve again once they reconnect, with the very same vouchers.
            for worker, auth in auths:
                deadline = time.monotonic() + 15
                while True:
                    try:
                        run = w.execute(auth.voucher, generate_job(max_new_tokens=2),
                                        target=worker.target)
                        break
                    except grpc.RpcError as error:
                        check_worker_error(error, grpc.StatusCode.UNAVAILABLE,
                                           "BROKER_UNAVAILABLE")
                        assert time.monotonic() < deadline, "no recovery"
                        time.sleep(0.2)
                assert run.result.status == worker_pb.JOB_STATUS_COMPLETED
                assert run.result.receipt.receipt_id == w.state(auth.authorization_id).receipt_id
            assert w.violations() == []
            assert fresh.stop() == 0
            w.check_log_privacy(w.worker, fresh)
        finally:
            if fresh.alive():
                fresh.kill()


def process_cpu_ms(pid: int) -> int:
    """utime + stime of a process, in ms (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def test_broker_lost_mid_job(tmp_path):
    with worker_world(tmp_path) as w:
        held = 1_000_000
        auth = w.authorize(held)
        outcome: dict = {}

        def run_job():
            try:
                outcome["run"] = w.execute(auth.voucher, burn_job(6_000))
            except grpc.RpcError as error:
                outcome["error"] = error

        worker_pid = w.worker.proc.pid
        cpu_before = process_cpu_ms(worker_pid)
        thread = threading.Thread(target=run_job)
        thread.start()
        time.sleep(1.5)
        cpu_at_kill = process_cpu_ms(worker_pid)
        w.broker.kill()
        time.sleep(0.5)
        w.restart_broker()
        thread.join(45)
        assert not thread.is_alive()
        assert w.worker.alive()
        assert "error" not in outcome, outcome.get("error")
        run = outcome["run"]
        result = run.result
        # The worker kept measuring, resumed the session and settled it.
        assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
        receipt = result.receipt
        assert receipt.receipt_id == w.state(auth.authorization_id).receipt_id
        assert receipt.outcome == "FINISHED"
        usage = check_settled_on_measured_usage(w, auth, receipt, result.usage)
        # The work done while the broker was away counts: the job is billed more CPU than
        # the whole worker process had used when the broker died (the most any report
        # acknowledged before could carry). Not a fixed figure: on a loaded machine the
        # burn gets only a share of a core, and the CPU meter bills what it got.
        assert usage["gpu_ms"] > cpu_at_kill - cpu_before
        assert w.state(auth.authorization_id).state == SETTLED
        assert w.h.wallet().pending == 0
        assert w.violations() == []
        # And it takes the next job.
        again = w.execute(w.authorize(100_000).voucher, generate_job(max_new_tokens=2))
        assert again.result.status == worker_pb.JOB_STATUS_COMPLETED
        w.check_log_privacy()


def test_broker_lost_between_last_report_and_finish(tmp_path):
    """The broker dies after the last usage report and comes back after the job ended:
    the worker resumes the session and settles on the final measured usage, instead of
    leaving it open until the hold expires (which would settle only what was acked)."""
    with worker_world(tmp_path) as w:
        auth = w.authorize(1_000_000)
        outcome: dict = {}

        def run_job():
            try:
                outcome["run"] = w.execute(auth.voucher, burn_job(1_500))
            except grpc.RpcError as error:
                outcome["error"] = error

        thread = threading.Thread(target=run_job)
        thread.start()
        time.sleep(1.25)  # the report at ~1 s is acked; the job ends at ~1.5 s
        w.broker.kill()
        time.sleep(0.5)
        w.restart_broker()
        thread.join(30)
        assert not thread.is_alive() and w.worker.alive()
        assert "error" not in outcome, outcome.get("error")
        run = outcome["run"]
        acked = [usage_dict(u.usage) for u in run.usages]
        result = run.result
        assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
        receipt = result.receipt
        assert receipt.receipt_id == w.state(auth.authorization_id).receipt_id, result.error
        usage = check_settled_on_measured_usage(w, auth, receipt, result.usage)
        assert not acked or usage["gpu_ms"] > acked[-1]["gpu_ms"]
        assert w.state(auth.authorization_id).state == SETTLED
        assert w.violations() == []
