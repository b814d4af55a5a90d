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
        p = self.s.authenticate(context, "worker")
        capabilities = convert.capabilities_from_proto(request.capabilities)
        prices = convert.prices_from_proto(request.prices)
        worker = await self.s.mutate(p, "RegisterWorker", request, lambda tx, now: (
            registry.register(tx, p, request.worker_id, request.endpoint, capabilities, prices,
                              now, request.usage_public_key)))
        lease = self.s.liveness.beat(worker["worker_id"], self.s.clock())
        return pb.RegisterWorkerResponse(
            worker_id=worker["worker_id"],
            heartbeat_interval_seconds=max(1, self.s.config.worker_lease_ms // 3000),
            lease_expire_time=convert.timestamp(lease))

    @unary
    async def Heartbeat(self, request, context):
        p = self.s.authenticate(context, "worker")
        worker = self.s.store.read(lambda tx: registry.get_own_worker(tx, p, request.worker_id))
        if not worker["active"]:
            raise registry.inactive(worker["worker_id"])
        lease = self.s.liveness.beat(worker["worker_id"], self.s.clock())
        return pb.HeartbeatResponse(lease_expire_time=convert.timestamp(lease))

    @unary
    async def DeregisterWorker(self, request, context):
        p = self.s.authenticate(context, "worker")
        worker = await self.s.mutate(p, "DeregisterWorker", request, lambda tx, now: (
            registry.deregister(tx, p, request.worker_id, now)))
        self.s.liveness.drop(worker["worker_id"])
        return pb.DeregisterWorkerResponse(worker_id=worker["worker_id"])

    @unary
    async def ListOffers(self, request, context):
        self.s.authenticate(context, "agent", "owner", "auditor", "admin")
        found = self.s.store.read(lambda tx: registry.offers(
            tx, self.s.liveness, self.s.clock(), request.resource_class, request.model))
        return pb.ListOffersResponse(offers=[convert.offer(w) for w in found],
                                     platform_fee_bps=self.s.config.fee_bps)
