"""A wall-clock step, back or forward, seen by a broker between two usage reports of a
running session (here: the broker restarts on a stepped clock and the worker resumes).
docs/reliability.md, "Clock steps", says what each kind of step does."""

import asyncio

from worker.broker_link import MeteringSession

from .conftest import aio_channel, open_session, run

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
