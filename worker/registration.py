"""Registration with the broker: register (retrying until the broker is up),
heartbeat, re-register if the broker forgot us (retried every beat until it works),
deregister on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from broker.v1 import worker_registry_service_pb2 as pb
from broker.v1 import worker_registry_service_pb2_grpc as pb_grpc
from common.convert import capabilities_to_proto, prices_to_proto
from common.files import write_secret
from common.status import error_info
from common.supervision import CannotGoOn

log = logging.getLogger("worker.registration")


class Registration:
    def __init__(self, channel: grpc.aio.Channel, api_key: str, endpoint: str,
                 capabilities: dict, prices: dict, usage_public_key: bytes, state_file: Path,
                 count: Callable[[str], None] = lambda task: None):
        self._stub = pb_grpc.WorkerRegistryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._request = pb.RegisterWorkerRequest(
            endpoint=endpoint, capabilities=capabilities_to_proto(capabilities),
            prices=prices_to_proto(prices), usage_public_key=usage_public_key)
        self._state_file = state_file
        self.worker_id = state_file.read_text().strip() if state_file.exists() else ""
        self.heartbeat_s = 5.0
        self._count = count  # a failed heartbeat or re-registration, by task (a metric)

    async def register(self, timeout_s: float = 60.0) -> str:
        """Register, retrying while the broker is unreachable. Keeps the worker id
        across restarts (state file) so agents' pinned vouchers stay valid."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                return await self._register_once()
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                if info is not None and info.reason == "WORKER_NOT_FOUND" and self.worker_id:
                    self.worker_id = ""  # a new broker: register afresh
                    continue
                if error.code() != grpc.StatusCode.UNAVAILABLE or \
                        asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _register_once(self) -> str:
        request = pb.RegisterWorkerRequest()
        request.CopyFrom(self._request)
        request.worker_id = self.worker_id
        reply = await self._stub.RegisterWorker(request, metadata=self._metadata, timeout=10)
        self.worker_id = reply.worker_id
        self.heartbeat_s = max(1.0, reply.heartbeat_interval_seconds)
        write_secret(self._state_file, self.worker_id.encode())  # 0600, like all its state
        log.info("registered with the broker as %s", self.worker_id)
        return self.worker_id

    async def heartbeat_forever(self) -> None:
        """Heartbeat every interval; re-register when the broker forgot us. A failed
        heartbeat or re-registration is logged, counted (`count`) and retried at the
        next beat; a refused key (revoked, wrong role) ends the task with CannotGoOn,
        since no retry can put the worker back in the offers."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.heartbeat_once()

    async def heartbeat_once(self) -> None:
        try:
            await self._stub.Heartbeat(pb.HeartbeatRequest(worker_id=self.worker_id),
                                       metadata=self._metadata, timeout=5)
            return
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            if info is None or info.reason not in ("WORKER_NOT_FOUND", "WORKER_NOT_ACTIVE"):
                self._failed("heartbeat", error)
                return
            log.warning("the broker does not know this worker as active (%s); registering "
                        "again", info.reason)
        try:
            await self._register_once()
        except grpc.aio.AioRpcError as error:
            self._failed("register", error)

    def _failed(self, task: str, error: grpc.aio.AioRpcError) -> None:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            info = error_info(error)
            raise CannotGoOn(f"the broker refused this worker's key ({error.code().name}"
                             f"{', ' + info.reason if info else ''})")  # counted by the supervisor
        self._count(task)
        log.warning("%s failed (%s); retrying in %.0f s", task, error.code().name,
                    self.heartbeat_s)

    async def deregister(self) -> None:
        try:
            await self._stub.DeregisterWorker(
                pb.DeregisterWorkerRequest(worker_id=self.worker_id), metadata=self._metadata,
                timeout=5)
            log.info("deregistered %s", self.worker_id)
        except grpc.aio.AioRpcError as error:
            log.warning("could not deregister (%s)", error.code().name)
