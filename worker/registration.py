"""Registration with the broker: register (retrying until the broker is up),
heartbeat, re-register if the broker forgot us, deregister on shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from broker.v1 import worker_registry_service_pb2 as pb
from broker.v1 import worker_registry_service_pb2_grpc as pb_grpc
from common.convert import capabilities_to_proto, prices_to_proto
from common.status import error_info

log = logging.getLogger("worker.registration")


class Registration:
    def __init__(self, channel: grpc.aio.Channel, api_key: str, endpoint: str,
                 capabilities: dict, prices: dict, usage_public_key: bytes, state_file: Path):
        self._stub = pb_grpc.WorkerRegistryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._request = pb.RegisterWorkerRequest(
            endpoint=endpoint, capabilities=capabilities_to_proto(capabilities),
            prices=prices_to_proto(prices), usage_public_key=usage_public_key)
        self._state_file = state_file
        self.worker_id = state_file.read_text().strip() if state_file.exists() else ""
        self.heartbeat_s = 5.0

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
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(self.worker_id)
        log.info("registered with the broker as %s", self.worker_id)
        return self.worker_id

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._stub.Heartbeat(pb.HeartbeatRequest(worker_id=self.worker_id),
                                           metadata=self._metadata, timeout=5)
            except grpc.aio.AioRpcError as error:
                info = error_info(error)
                if info is not None and info.reason in ("WORKER_NOT_FOUND", "WORKER_NOT_ACTIVE"):
                    await self._register_once()
                else:
                    log.warning("heartbeat failed (%s); retrying", error.code().name)

    async def deregister(self) -> None:
        try:
            await self._stub.DeregisterWorker(
                pb.DeregisterWorkerRequest(worker_id=self.worker_id), metadata=self._metadata,
                timeout=5)
            log.info("deregistered %s", self.worker_id)
        except grpc.aio.AioRpcError as error:
            log.warning("could not deregister (%s)", error.code().name)
