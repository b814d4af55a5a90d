"""WorkerRegistryService: registration, heartbeats, offers."""

from __future__ import annotations

from common import convert

from ..core import registry
from ..v1 import worker_registry_service_pb2 as pb
from ..v1 import worker_registry_service_pb2_grpc as pb_grpc
from .base import Services, unary


class WorkerRegistryServicer(pb_grpc.WorkerRegistryServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def RegisterWorker(self, request, context):
        p = await self.s.authenticate(context, "worker")
        capabilities = convert.capabilities_from_proto(request.capabilities)
        prices = convert.prices_from_proto(request.prices)
        worker = await self.s.mutate(p, "RegisterWorker", request, lambda tx, now: (
            registry.register(tx, p, request.worker_id, request.endpoint, capabilities, prices,
                              now, request.usage_public_key)))
        lease = await self.s.beat(worker["worker_id"])
        return pb.RegisterWorkerResponse(
            worker_id=worker["worker_id"],
            heartbeat_interval_seconds=max(1, self.s.config.worker_lease_ms // 3000),
            lease_expire_time=convert.timestamp(lease))

    @unary
    async def Heartbeat(self, request, context):
        p = await self.s.authenticate(context, "worker")
        worker = await self.s.read(lambda tx: registry.get_own_worker(tx, p, request.worker_id))
        if not worker["active"]:
            raise registry.inactive(worker["worker_id"])
        lease = await self.s.beat(worker["worker_id"])
        return pb.HeartbeatResponse(lease_expire_time=convert.timestamp(lease))

    @unary
    async def DeregisterWorker(self, request, context):
        p = await self.s.authenticate(context, "worker")
        worker = await self.s.mutate(p, "DeregisterWorker", request, lambda tx, now: (
            registry.deregister(tx, p, request.worker_id, now)))
        await self.s.drop(worker["worker_id"])
        return pb.DeregisterWorkerResponse(worker_id=worker["worker_id"])

    @unary
    async def ListOffers(self, request, context):
        await self.s.authenticate(context, "agent", "owner", "auditor", "admin")
        live = await self.s.live_ids()
        found = await self.s.read(lambda tx: registry.offers(
            tx, live, request.resource_class, request.model))
        return pb.ListOffersResponse(offers=[convert.offer(w) for w in found],
                                     platform_fee_bps=self.s.config.fee_bps)
