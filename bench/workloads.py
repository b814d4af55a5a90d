"""What one caller does, against the broker or (params["echo"]) the bare echo server.

Every workload does the same client-side work in both modes: it builds and signs the
same messages and sends them as raw bytes (no response parsing in the measured loops),
so the two servers are measured with one harness. A caller is made by
`WORKLOADS[name](params, index, channel)`; `setup()` runs before the clock starts, then
`prepare()` (CPU work, once every caller's setup is done),
`step()` is one measured op (it returns False when the caller is done, or a dict
sample), `close()` runs after the clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
from nacl.signing import SigningKey

from bench.echo import STREAM as ECHO_STREAM
from bench.echo import UNARY as ECHO_UNARY
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import resources_pb2 as res_pb
from common import usage_signing
from common.money import charge_for

AUTHORIZE = "/broker.v1.AuthorizationService/Authorize"
METER = "/broker.v1.MeteringService/Meter"
METER_WORKER = "/broker.v1.MeteringService/MeterWorker"
# First byte of a serialized MeterResponse: the tag of its `kind` field (length-delimited).
ACK, STOP = (2 << 3) | 2, (3 << 3) | 2
TIMEOUT_S = 60
UNAVAILABLE_RETRIES = 5  # Authorize with retry_unavailable


def _metadata(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


class Caller:
    """The shared parts: the agent's and the worker's identity, and the two call kinds."""

    def __init__(self, params: dict[str, Any], index: int, channel: grpc.aio.Channel):
        self.params, self.index, self.channel = params, index, channel
        self.echo = bool(params.get("echo"))
        agents = params.get("agent_keys") or ["-"]
        self.agent_md = _metadata(agents[index % len(agents)])
        worker_keys = params.get("worker_keys") or ["-"]
        self.worker_md = _metadata(worker_keys[index % len(worker_keys)])
        workers = params.get("workers") or [("wrk_echo", "00" * 32)]
        self.worker_id, seed = workers[index % len(workers)]
        self.usage_key = SigningKey(bytes.fromhex(seed))
        self.unary = channel.unary_unary(ECHO_UNARY if self.echo else AUTHORIZE)
        self.stream_method = channel.stream_stream(ECHO_STREAM if self.echo else METER)
        self.prefix = f"{uuid.uuid4().hex[:12]}-{index}-"
        self.n = 0

    def authorize_request(self, amount: int) -> bytes:
        self.n += 1
        return auth_pb.AuthorizeRequest(
            request_id=f"{self.prefix}{self.n}", amount=amount,
            ttl_seconds=self.params.get("ttl_seconds", 600)).SerializeToString()

    async def authorize(self, amount: int) -> str:
        """A voucher (in echo mode the same call shape, and no voucher)."""
        reply = await self.unary(self.authorize_request(amount), metadata=self.agent_md,
                                 timeout=TIMEOUT_S)
        return "" if self.echo else auth_pb.AuthorizeResponse.FromString(
            reply).authorization.voucher

    async def open(self, voucher: str):
        """(stream, session id) of a newly redeemed voucher."""
        call = self.stream_method(metadata=self.worker_md, timeout=3600)
        await call.write(meter_pb.MeterRequest(open=meter_pb.OpenSession(
            request_id=f"{self.prefix}open{self.n}", voucher=voucher or "v1.echo",
            worker_id=self.worker_id)).SerializeToString())
        reply = await call.read()
        if self.echo:
            return call, f"ses_echo{self.index}"
        response = meter_pb.MeterResponse.FromString(reply)
        if response.WhichOneof("kind") != "grant":
            raise RuntimeError(f"open answered {response}")
        return call, response.grant.session_id

    def report(self, session_id: str, seq: int, usage: dict[str, int]) -> bytes:
        signature = usage_signing.sign(self.usage_key,
                                       usage_signing.payload(session_id, usage, seq=seq))
        return meter_pb.MeterRequest(usage=meter_pb.UsageReport(
            seq=seq, usage=res_pb.Usage(**usage), signature=signature)).SerializeToString()

    def finish_request(self, session_id: str, usage: dict[str, int]) -> bytes:
        signature = usage_signing.sign(self.usage_key,
                                       usage_signing.payload(session_id, usage, final=True))
        return meter_pb.MeterRequest(finish=meter_pb.FinishSession(
            usage=res_pb.Usage(**usage), signature=signature)).SerializeToString()

    async def exchange(self, call, message: bytes, expect: int = ACK) -> bytes:
        await call.write(message)
        reply = await call.read()
        if not self.echo and (reply is grpc.aio.EOF or reply[0] != expect):
            raise RuntimeError(f"expected message kind {expect >> 3}, got {reply!r:.80}")
        return reply

    async def setup(self) -> None:
        pass

    def prepare(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Authorize(Caller):
    """authorize_per_s: one Authorize (hold + voucher) per step. With `retry_unavailable`
    (the PostgreSQL figures), an UNAVAILABLE is retried with the same request_id, as a
    client does, and the step's sample counts the retries."""

    async def step(self) -> dict[str, int] | None:
        request = self.authorize_request(self.params.get("amount", 1_000))
        for retries in range(UNAVAILABLE_RETRIES + 1):
            try:
                await self.unary(request, metadata=self.agent_md, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if not self.params.get("retry_unavailable") or retries == UNAVAILABLE_RETRIES \
                        or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                continue
            return {"retries": retries} if self.params.get("retry_unavailable") else None
        raise AssertionError("unreachable")


class Usage(Caller):
    """usage_reports_per_s: one usage report and its ack per step, on a session opened
    in setup; the reports are signed in setup. `sample_every`: only every n-th caller
    reports (sessions_open keeps the rest idle)."""

    async def setup(self) -> None:
        self.call, self.session_id = await self.open(await self.authorize(
            self.params.get("amount", 1_000_000)))
        self.reports: list[bytes] = []
        self.sent = 0

    def prepare(self) -> None:
        if self.index % self.params.get("sample_every", 1):
            return
        step_ms = self.params.get("gpu_ms_per_report", 10)
        self.reports = [self.report(self.session_id, seq, {"gpu_ms": seq * step_ms})
                        for seq in range(1, self.params.get("reports", 1) + 1)]

    async def step(self) -> bool | None:
        if self.sent >= len(self.reports):
            if self.params.get("sample_every"):
                return False
            raise RuntimeError("ran out of pre-signed reports: raise params['reports']")
        self.sent += 1
        await self.exchange(self.call, self.reports[self.sent - 1])
        return None

    async def close(self) -> None:
        self.call.cancel()  # the session stays open; the bench broker is stopped after


class JobCycle(Caller):
    """job_cycles_per_s: authorize, redeem, 10 usage reports, settle; one cycle per step."""

    async def step(self) -> None:
        call, session_id = await self.open(await self.authorize(100_000))
        for seq in range(1, 11):
            await self.exchange(call, self.report(session_id, seq, {"gpu_ms": seq * 10}))
        await self.exchange(call, self.finish_request(session_id, {"gpu_ms": 105}),
                            expect=(4 << 3) | 2)
        await call.done_writing()
        if not self.echo:
            await call.read()  # the end of the stream (EOF)


class StopTrial(Caller):
    """stop_latency_ms: one hold run to exhaustion per step. The caller reports every
    `pace_ms` with that much more GPU time (real time, as a worker would) until STOP;
    the latency is from sending the report that triggered STOP to STOP's arrival. Then
    it finishes with one more report interval of GPU time (the most a worker may run
    after STOP) and checks that nothing beyond the hold is charged: overspend is the
    price of that final usage above the hold."""

    async def step(self) -> dict[str, Any]:
        budget, pace_ms = self.params["budget"], self.params.get("pace_ms", 20)
        interval_ms = self.params.get("report_interval_ms", 1000)
        call, session_id = await self.open(await self.authorize(budget))
        arrived: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            while (reply := await call.read()) is not grpc.aio.EOF:
                arrived.put_nowait((time.perf_counter(), reply))

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(pace_ms / 1000)  # the first interval of work
            for seq in range(1, 1000):
                usage = {"gpu_ms": seq * pace_ms}
                message = self.report(session_id, seq, usage)
                sent = time.perf_counter()
                await call.write(message)
                stopped_at = None
                while True:  # STOP may come before the ack (it need not wait for fsync)
                    at, reply = await asyncio.wait_for(arrived.get(), TIMEOUT_S)
                    if reply[0] == STOP:
                        stopped_at = at
                    elif reply[0] == ACK:
                        break
                    else:
                        raise RuntimeError(f"expected an ack or STOP, got {reply!r:.80}")
                if meter_pb.MeterResponse.FromString(reply).ack.remaining == 0:
                    raise RuntimeError("the hold was used up before STOP")
                if stopped_at is None:
                    try:  # or right after the ack; if not, the wait was the next interval
                        stopped_at, reply = await asyncio.wait_for(arrived.get(),
                                                                   pace_ms / 1000)
                    except TimeoutError:
                        continue
                    if reply[0] != STOP:
                        raise RuntimeError(f"expected STOP, got {reply!r:.80}")
                stop_ms = (stopped_at - sent) * 1000
                break
            else:
                raise RuntimeError("no STOP")
            final = {"gpu_ms": usage["gpu_ms"] + interval_ms}
            await call.write(self.finish_request(session_id, final))
            _, reply = await asyncio.wait_for(arrived.get(), TIMEOUT_S)
            receipt = meter_pb.MeterResponse.FromString(reply).settled.receipt
            await call.done_writing()
            await reader
        finally:
            reader.cancel()
        prices = {"gpu_second_price": self.params["gpu_second_price"]}
        return {"stop_ms": stop_ms, "overspend": max(0, charge_for(final, prices) - budget),
                "charged": receipt.charged, "held": receipt.held}


class EchoPaced(Caller):
    """The stop-latency baseline: one signed report echoed per step, at the same pace."""

    async def setup(self) -> None:
        self.call, self.session_id = await self.open("")
        self.seq = 0

    async def step(self) -> None:
        self.seq += 1
        await self.exchange(self.call, self.report(self.session_id, self.seq,
                                                   {"gpu_ms": self.seq * 20}))

    async def close(self) -> None:
        self.call.cancel()


class UsageBatched(Caller):
    """usage_reports_per_s_batched: one MeterWorker batch of `per_message` reports (one
    per session, signed once) and its answer per step; the sessions are opened in setup
    with one batch of opens. In echo mode the same batches go to the echo stream."""

    async def setup(self) -> None:
        per = self.params.get("per_message", 8)
        method = ECHO_STREAM if self.echo else METER_WORKER
        self.call = self.channel.stream_stream(method)(metadata=self.worker_md, timeout=3600)
        if self.echo:
            sessions = [f"ses_echo{self.index}_{i}" for i in range(per)]
        else:
            vouchers = [await self.authorize(self.params.get("amount", 1_000_000))
                        for _ in range(per)]
            opens = meter_pb.MeterWorkerRequest(worker_id=self.worker_id, batch_id=0, opens=[
                meter_pb.WorkerOpen(ref=str(i), open=meter_pb.OpenSession(voucher=v))
                for i, v in enumerate(vouchers)])
            await self.call.write(opens.SerializeToString())
            answer = meter_pb.MeterWorkerResponse.FromString(await self.call.read())
            sessions = [r.session_id for r in answer.results]
            if not all(r.WhichOneof("kind") == "grant" for r in answer.results):
                raise RuntimeError(f"opens answered {answer}")
        self.sessions = sessions
        self.batches: list[bytes] = []
        self.sent = 0

    def prepare(self) -> None:
        step_ms = self.params.get("gpu_ms_per_report", 10)
        self.batches = [self.batch(self.sessions, seq, {"gpu_ms": seq * step_ms})
                        for seq in range(1, self.params.get("reports", 1) + 1)]

    async def step(self) -> None:
        if self.sent == 0:
            # `in_flight` > 1: that many batches outstanding (as the worker daemon may have
            # when a commit takes longer than its tick); each step sends one and reads one.
            for _ in range(self.params.get("in_flight", 1) - 1):
                self.sent += 1
                await self.call.write(self.batches[self.sent - 1])
        await self._step()

    def batch(self, sessions: list[str], seq: int, usage: dict[str, int]) -> bytes:
        digests = [usage_signing.digest(usage_signing.payload(s, usage, seq=seq))
                   for s in sessions]
        return meter_pb.MeterWorkerRequest(
            worker_id=self.worker_id, batch_id=seq, reports=[
                meter_pb.SessionUsageReport(session_id=s, seq=seq, usage=res_pb.Usage(**usage))
                for s in sessions],
            signature=usage_signing.sign(self.usage_key, usage_signing.batch_payload(digests)),
        ).SerializeToString()

    async def _step(self) -> None:
        if self.sent >= len(self.batches):
            raise RuntimeError("ran out of pre-signed batches: raise params['reports']")
        self.sent += 1
        await self.call.write(self.batches[self.sent - 1])
        reply = await self.call.read()
        if reply is grpc.aio.EOF:
            raise RuntimeError("the stream ended")

    async def close(self) -> None:
        self.call.cancel()



class FleetWorker(Caller):
    """fleet: one simulated worker with `sessions` running jobs on one MeterWorker
    stream, reporting all of them in one batch every `interval_s` (on a fixed schedule,
    each worker at its own phase), each job's usage its real elapsed GPU time. A job's
    hold lasts `hold_s` (a range) of GPU time; when STOP comes the job stops at once (its
    usage is the elapsed time when STOP arrived), is finished in the next batch, and a
    new job is opened in its place. One step is one tick; it returns a sample: the
    reports acknowledged and their batch's ack latency, the STOP latencies (from
    sending the report that triggered STOP to its arrival) and the settled jobs."""

    async def setup(self) -> None:
        import random

        self.rng = random.Random(self.index)
        self.interval = self.params.get("interval_s", 1.0)
        self.price = self.params["gpu_second_price"]
        self.call = self.channel.stream_stream(METER_WORKER)(metadata=self.worker_md,
                                                              timeout=3600)
        self.slots: dict[str, dict[str, Any]] = {}  # session id -> its job
        self.batch_id = 0
        self.pending_opens = [await self._voucher() for _ in range(self.params["sessions"])]
        await self._exchange(self._batch([], []))
        self.next_tick = None

    async def _voucher(self) -> tuple[str, int]:
        low, high = self.params.get("hold_s", (5, 15))
        budget = int(self.rng.uniform(low, high) * self.price)
        return await self.authorize(budget), budget

    def _batch(self, reports: list[tuple[str, int, dict]],
               finishes: list[tuple[str, dict]]) -> bytes:
        self.batch_id += 1
        self.opening = [budget for _, budget in self.pending_opens]
        opens = [meter_pb.WorkerOpen(ref=str(i), open=meter_pb.OpenSession(voucher=v))
                 for i, (v, _) in enumerate(self.pending_opens)]
        self.pending_opens = []
        digests = [usage_signing.digest(usage_signing.payload(s, u, seq=q))
                   for s, q, u in reports]
        request = meter_pb.MeterWorkerRequest(
            worker_id=self.worker_id, batch_id=self.batch_id, opens=opens,
            reports=[meter_pb.SessionUsageReport(session_id=s, seq=q, usage=res_pb.Usage(**u))
                     for s, q, u in reports],
            finishes=[meter_pb.SessionFinish(session_id=s, finish=meter_pb.FinishSession(
                usage=res_pb.Usage(**u), signature=usage_signing.sign(
                    self.usage_key, usage_signing.payload(s, u, final=True))))
                for s, u in finishes])
        if reports:
            request.signature = usage_signing.sign(self.usage_key,
                                                   usage_signing.batch_payload(digests))
        return request.SerializeToString()

    async def _exchange(self, message: bytes) -> tuple[float, dict[str, float], Any]:
        """Send a batch; (ack latency, STOP latency per session, the answer)."""
        sent = time.perf_counter()
        await self.call.write(message)
        stops: dict[str, float] = {}
        while True:
            reply = await asyncio.wait_for(self.call.read(), TIMEOUT_S)
            at = time.perf_counter()
            if reply is grpc.aio.EOF:
                raise RuntimeError("the stream ended")
            answer = meter_pb.MeterWorkerResponse.FromString(reply)
            for result in answer.results:
                if result.HasField("stop"):
                    stops.setdefault(result.session_id, at)
            if not answer.early:
                break
        refs = iter(self.opening)
        for result in answer.results:
            kind = result.WhichOneof("kind")
            if kind == "error":
                raise RuntimeError(f"refused: {result}")
            if kind == "grant":
                self.slots[result.session_id] = {"budget": next(refs), "opened": at, "seq": 0,
                                                 "stopped": None, "usage": {"gpu_ms": 0}}
        return at - sent, {s: t - sent for s, t in stops.items()}, answer

    async def step(self) -> dict[str, Any]:
        now = time.perf_counter()
        if self.next_tick is None:  # each worker at its own phase of the interval
            self.next_tick = now + self.rng.uniform(0, self.interval)
        await asyncio.sleep(max(0.0, self.next_tick - now))
        now = time.perf_counter()
        late_ms = (now - self.next_tick) * 1000  # the worker (or its stream) fell behind
        self.next_tick += self.interval
        reports, finishes = [], []
        for session_id, job in self.slots.items():
            if job["stopped"] is not None:
                finishes.append((session_id, job["usage"]))
            else:
                job["seq"] += 1
                job["usage"] = {"gpu_ms": int((now - job["opened"]) * 1000)}
                reports.append((session_id, job["seq"], job["usage"]))
        ack_s, stops, answer = await self._exchange(self._batch(reports, finishes))
        for session_id, latency in stops.items():
            job = self.slots[session_id]
            job["stopped"] = latency
            # The job stops when STOP arrives: its final usage is the GPU time until then.
            job["usage"] = {"gpu_ms": job["usage"]["gpu_ms"] + int(latency * 1000)}
        settled = []
        for result in answer.results:
            if result.WhichOneof("kind") == "settled":
                job = self.slots.pop(result.session_id)
                receipt = result.settled.receipt
                used = charge_for(job["usage"], {"gpu_second_price": self.price})
                settled.append({"overspend": max(0, used - job["budget"]),
                                "charged": receipt.charged, "held": receipt.held,
                                "owed": min(used, job["budget"])})
                self.pending_opens.append(await self._voucher())
        return {"reports": len(reports), "ack_ms": ack_s * 1000, "late_ms": late_ms,
                "stop_ms": [s * 1000 for s in stops.values()], "settled": settled}

    async def close(self) -> None:
        self.call.cancel()


WORKLOADS = {"authorize": Authorize, "usage": Usage, "job_cycle": JobCycle,
             "stop_trial": StopTrial, "echo_paced": EchoPaced, "usage_batched": UsageBatched,
             "fleet": FleetWorker}
