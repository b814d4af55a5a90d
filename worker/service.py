"""WorkerService: the agent-facing gRPC surface of a worker."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_status import rpc_status

from common.convert import capabilities_to_proto, prices_to_proto
from common.errors import BrokerError, Code
from common.status import to_status

from .execution import JobRunner, PassThrough
from .v1 import worker_service_pb2 as pb
from .v1 import worker_service_pb2_grpc as pb_grpc

log = logging.getLogger("worker.service")


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    def __init__(self, runner: JobRunner, max_concurrent_jobs: int, handler_modules: list[str]):
        self.runner = runner
        self.slots = asyncio.Semaphore(max_concurrent_jobs)
        self.handler_modules = handler_modules
        self.draining = False
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def Execute(self, request, context):
        try:
            self._admit()
            async with self.slots:
                self.running += 1
                self.idle.clear()
                try:
                    async for event in self.runner.execute(request):
                        yield event
                finally:
                    self.running -= 1
                    if not self.running:
                        self.idle.set()
        except BrokerError as error:
            await context.abort_with_status(to_status(error, domain="worker.v1"))
        except PassThrough as passed:
            status = rpc_status.from_call(passed.error)
            if status is not None:
                await context.abort_with_status(rpc_status.to_status(status))
            await context.abort(passed.error.code(), passed.error.details())
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error in Execute")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _admit(self) -> None:
        if self.draining:
            raise BrokerError(Code.UNAVAILABLE, "WORKER_DRAINING",
                              "the worker is shutting down; use another offer")
        if self.slots.locked():
            raise BrokerError(Code.RESOURCE_EXHAUSTED, "WORKER_BUSY",
                              "the worker is busy; nothing was spent, try another offer")

    async def GetCapabilities(self, request, context):
        identity = self.runner.identity
        return pb.GetCapabilitiesResponse(
            worker_id=identity.worker_id,
            capabilities=capabilities_to_proto(identity.capabilities),
            prices=prices_to_proto(identity.prices), handlers=self.handler_modules,
            usage_public_key=bytes(self.runner.broker.usage_key.verify_key))

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new jobs and wait for running ones. True when all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
