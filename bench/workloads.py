"""What one caller does, against the broker or (params["echo"]) the bare echo server.

Every workload does the same client-side work in both modes: it builds and signs the
same messages and sends them as raw bytes (no response parsing in the measured loops),
so the two servers are measured with one harness. A caller is made by
`WORKLOADS[name](params, index, channel)`; `setup()` runs before the clock starts,
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
# First byte of a serialized MeterResponse: the tag of its `kind` field (length-delimited).
ACK, STOP = (2 << 3) | 2, (3 << 3) | 2
TIMEOUT_S = 60


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

    async def close(self) -> None:
        pass


class Authorize(Caller):
    """authorize_per_s: one Authorize (hold + voucher) per step."""

    async def step(self) -> None:
        await self.unary(self.authorize_request(self.params.get("amount", 1_000)),
                         metadata=self.agent_md, timeout=TIMEOUT_S)


class Usage(Caller):
    """usage_reports_per_s: one usage report and its ack per step, on a session opened
    in setup; the reports are signed in setup. `sample_every`: only every n-th caller
    reports (sessions_open keeps the rest idle)."""

    async def setup(self) -> None:
        self.call, session_id = await self.open(await self.authorize(
            self.params.get("amount", 1_000_000)))
        step_ms = self.params.get("gpu_ms_per_report", 10)
        self.reports = [self.report(session_id, seq, {"gpu_ms": seq * step_ms})
                        for seq in range(1, self.params.get("reports", 1) + 1)]
        self.sent = 0
        if self.index % self.params.get("sample_every", 1):
            self.reports = []

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


WORKLOADS = {"authorize": Authorize, "usage": Usage, "job_cycle": JobCycle,
             "stop_trial": StopTrial, "echo_paced": EchoPaced}
