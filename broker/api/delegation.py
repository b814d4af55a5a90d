"""DelegationService: owners manage agent keys; agents and owners manage sub-budgets."""

from __future__ import annotations

import base64

from common import convert

from ..core import agent_keys, delegation, mandates
from ..store.base import Record
from ..v1 import delegation_service_pb2 as pb
from ..v1 import delegation_service_pb2_grpc as pb_grpc
from .base import Services, unary
from .policy_convert import policy_from_proto


def agent_key(k: Record) -> pb.AgentKey:
    return pb.AgentKey(key_id=k["key_id"], wallet_id=k["wallet_id"],
                       description=k["description"], revoked=k["revoked"],
                       create_time=convert.timestamp(k["create_ms"]))


def scope_to_proto(s: Record) -> pb.SubBudgetScope:
    return pb.SubBudgetScope(models=s["models"], resource_classes=s["resource_classes"],
                             worker_ids=s["worker_ids"],
                             max_prices=convert.prices_to_proto(s["max_prices"]))


def scope_from_proto(msg: pb.SubBudgetScope) -> Record:
    return {"models": list(msg.models), "resource_classes": list(msg.resource_classes),
            "worker_ids": list(msg.worker_ids),
            "max_prices": convert.caps_from_proto(msg.max_prices)}


def sub_budget(b: Record) -> pb.SubBudget:
    return pb.SubBudget(
        wallet_id=b["wallet_id"], parent_wallet_id=b["parent_wallet_id"],
        root_wallet_id=b["root_wallet_id"], depth=b["depth"], cap=b["cap"], held=b["held"],
        spent=b["spent"], available=b["available"],
        expire_time=convert.timestamp(b["expire_ms"]), scope=scope_to_proto(b["scope"]),
        revoked=b["revoked"], stopped=b["stopped"], create_time=convert.timestamp(b["create_ms"]))


def mandate_key(k: Record) -> pb.MandateKey:
    msg = pb.MandateKey(key_id=k["key_id"], public_key=base64.b64decode(k["public_key"]),
                        revoked=k["revoked"], create_time=convert.timestamp(k["create_ms"]))
    if k["revoke_ms"]:
        msg.revoke_time.CopyFrom(convert.timestamp(k["revoke_ms"]))
    return msg


def mandate(m: Record) -> pb.Mandate:
    return pb.Mandate(mandate_hash=m["mandate_hash"], key_id=m["key_id"],
                      wallet_id=m["wallet_id"], agent_key_id=m["agent_key_id"],
                      max_per_job=m["per_job"], max_total=m["total"], used=m["used"],
                      models=m["models"], expire_time=convert.timestamp(m["expire_ms"]),
                      token=m["token"])


class DelegationServicer(pb_grpc.DelegationServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def CreateAgentKey(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "CreateAgentKey", request, lambda tx, now: (
            agent_keys.create(tx, p, request.wallet_id, request.description, now)))
        # (A retry of the request_id answers without the secret: it is never stored.)
        return pb.CreateAgentKeyResponse(key_id=result["key_id"],
                                         api_key=result.get("api_key", ""))

    @unary
    async def ListAgentKeys(self, request, context):
        p = await self.s.authenticate(context, "owner")
        page = await self.s.read(lambda tx: agent_keys.list_keys(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListAgentKeysResponse(keys=[agent_key(k) for k in page["keys"]],
                                        next_page_token=page["next_page_token"])

    @unary
    async def RevokeAgentKey(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "RevokeAgentKey", request, lambda tx, now: (
            agent_keys.revoke(tx, p, request.key_id, now)))
        return pb.RevokeAgentKeyResponse(key=agent_key(result))

    @unary
    async def CreateSubBudget(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent")
        expire_ms = convert_ms(request.expire_time) if request.HasField("expire_time") else 0
        raw_policy = policy_from_proto(request.policy) if request.HasField("policy") else None
        result = await self.s.mutate(p, "CreateSubBudget", request, lambda tx, now: (
            delegation.create(tx, p, request.parent_wallet_id, request.display_name,
                              request.cap, expire_ms, scope_from_proto(request.scope),
                              raw_policy, request.key_description, now, self.s.config)))
        return pb.CreateSubBudgetResponse(wallet=convert.wallet(result["wallet"]),
                                          sub_budget=sub_budget(result["sub_budget"]),
                                          key_id=result["key_id"],
                                          api_key=result.get("api_key", ""))

    @unary
    async def GetSubBudget(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent")
        now = self.s.clock()
        found = await self.s.read(lambda tx: delegation.get(tx, p, request.wallet_id, now))
        return pb.GetSubBudgetResponse(sub_budget=sub_budget(found))

    @unary
    async def ListSubBudgets(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent")
        now = self.s.clock()
        page = await self.s.read(lambda tx: delegation.list_children(
            tx, p, request.parent_wallet_id, request.page_size, request.page_token, now))
        return pb.ListSubBudgetsResponse(
            sub_budgets=[sub_budget(b) for b in page["sub_budgets"]],
            next_page_token=page["next_page_token"])

    @unary
    async def RevokeSubBudget(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent")
        result = await self.s.mutate(p, "RevokeSubBudget", request, lambda tx, now: (
            delegation.revoke(tx, p, request.wallet_id, now)))
        return pb.RevokeSubBudgetResponse(sub_budget=sub_budget(result))

    @unary
    async def RegisterMandateKey(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "RegisterMandateKey", request, lambda tx, now: (
            mandates.register_key(tx, p, request.public_key, now)))
        return pb.RegisterMandateKeyResponse(key=mandate_key(result))

    @unary
    async def ListMandateKeys(self, request, context):
        p = await self.s.authenticate(context, "owner")
        page = await self.s.read(lambda tx: mandates.list_keys(
            tx, p, request.page_size, request.page_token))
        return pb.ListMandateKeysResponse(keys=[mandate_key(k) for k in page["keys"]],
                                          next_page_token=page["next_page_token"])

    @unary
    async def RevokeMandateKey(self, request, context):
        p = await self.s.authenticate(context, "owner")
        result = await self.s.mutate(p, "RevokeMandateKey", request, lambda tx, now: (
            mandates.revoke_key(tx, p, request.key_id, now)))
        return pb.RevokeMandateKeyResponse(key=mandate_key(result))

    @unary
    async def GetMandate(self, request, context):
        p = await self.s.authenticate(context, "owner", "agent")
        found = await self.s.read(lambda tx: mandates.get(tx, p, request.mandate_hash))
        return pb.GetMandateResponse(mandate=mandate(found))


def convert_ms(ts) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000
