"""A wall-clock step, back or forward, seen by a broker between two usage reports of a
running session (here: the broker restarts on a stepped clock and the worker resumes).
docs/reliability.md, "Clock steps", says what each kind of step does."""

import asyncio

from broker.v1 import metering_service_pb2 as pb
from worker.broker_link import MeteringSession
from worker.worker_stream import WorkerStream

from .conftest import aio_channel, open_session, run
from .spend_helpers import register_signing_worker

STEP_MS = 120_000


def test_a_session_runs_on_through_a_clock_step_back_and_forward(h):
    worker_id = h.register_worker(gpu_second_price=1000)  # 1 micro-credit per GPU-ms
    held = 500_000
    auth = h.agent.authorize(held, ttl_seconds=600)
    key = h.creds["worker_api_key"]

    async def after_step(session: MeteringSession, offset_ms: int) -> None:
        """The broker dies and comes back with its wall clock moved by `offset_ms`."""
        await asyncio.to_thread(h.broker.kill)
        await session.abandon()
        h.broker.extra_args = ("--clock-offset-ms", str(offset_ms))
        await asyncio.to_thread(h.broker.start)

    async def scenario():
        # A job using 1 s of GPU per second, reporting every 0.5 s.
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, key, auth.voucher, worker_id)
            await asyncio.sleep(0.5)
            acks = [await session.report({"gpu_ms": 500})]
            await after_step(session, -STEP_MS)
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, key, session.session_id, worker_id)
            await asyncio.sleep(0.5)
            acks.append(await session.report({"gpu_ms": 1000}))
            await after_step(session, +STEP_MS)
        async with aio_channel(h.target) as ch:
            session = await MeteringSession.resume(ch, key, session.session_id, worker_id)
            await asyncio.sleep(0.5)
            acks.append(await session.report({"gpu_ms": 1500}))
            await asyncio.sleep(0.1)  # (a STOP would come right after the ack)
            stopped = session.stopped.is_set()
            receipt = await session.finish({"gpu_ms": 1600})
        return acks, stopped, receipt

    acks, stopped, receipt = run(scenario())
    assert [(a.charged, a.remaining) for a in acks] == [
        (500, held - 500), (1000, held - 1000), (1500, held - 1500)]
    # Before the fix, the report after the step back projected a whole interval's spend
    # from 1 ms and sent STOP (BUDGET_EXHAUSTED): the job would have ended there.
    assert not stopped
    assert (receipt.outcome, receipt.charged, receipt.released) == (
        "FINISHED", 1600, held - 1600)
    assert list(h.summary().violations) == []


def test_a_step_back_between_two_reports_on_one_stream_leaves_the_stop_rule_alone(h, tmp_path):
    """The wall clock steps back two minutes between two reports that share a stream,
    on `Meter` and on `MeterWorker` alike: the time between them is measured on the
    monotonic clock, so a report that would use the rest of the hold within an interval
    at its rate still gets STOP (the wall clock, stepped back, would show no time
    passing and no rate to project)."""
    step = tmp_path / "clock-step-ms"
    step.write_text("0")
    h.broker.kill()
    h.broker.extra_args = ("--clock-offset-file", str(step))
    h.broker.start()
    worker_id, usage_key = register_signing_worker(h)  # 1 micro-credit per GPU-ms
    held = 100_000
    # Report 2 adds 60,000 at once: at that rate the next interval (1 s) would take far
    # more than the 40,000 left, unless more than 1.5 s passed between the two reports.
    # A wall-clock projection alone (one interval's GPU time, 1,000) would not stop it.
    single_auth, batched_auth = (h.agent.authorize(held, ttl_seconds=600) for _ in range(2))
    key = h.creds["worker_api_key"]

    async def scenario():
        async with aio_channel(h.target) as ch:
            single = await open_session(ch, key, single_auth.voucher, worker_id,
                                        usage_key=usage_key)
            stream = WorkerStream(ch, key, worker_id, usage_key)
            batched = await stream.open(batched_auth.voucher)
            for ses in (single, batched):
                await ses.report({"gpu_ms": 10})
            step.write_text(str(-STEP_MS))
            acks = [await ses.report({"gpu_ms": 60_010}) for ses in (single, batched)]
            await asyncio.sleep(0.1)  # (a STOP not foreseen would come after the ack)
            stops = [ses.stop for ses in (single, batched)]
            receipts = [await ses.finish({"gpu_ms": 60_010}) for ses in (single, batched)]
            await stream.close()
            return acks, stops, receipts

    acks, stops, receipts = run(scenario())
    assert [(a.charged, a.remaining) for a in acks] == [(60_010, held - 60_010)] * 2
    assert [s.reason if s else None for s in stops] == [pb.STOP_REASON_BUDGET_EXHAUSTED] * 2
    assert [(r.outcome, r.charged) for r in receipts] == [("STOPPED", 60_010)] * 2
    assert list(h.summary().violations) == []
