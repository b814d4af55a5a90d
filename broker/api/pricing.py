"""PricingService: quotes, subscription plans and grants, leases of reserved capacity."""

from __future__ import annotations

import base64

from common import convert

from ..core import access, authorizations, lease_settlement, leases, quotes, subscriptions
from ..store.base import Record
from ..v1 import pricing_service_pb2 as pb
from ..v1 import pricing_service_pb2_grpc as pb_grpc
from .base import Services, unary

READERS = ("agent", "owner", "auditor", "admin")
OVERSEERS = ("owner", "auditor", "admin")  # an owner's whole tenant: not agents
SUBSCRIPTION_STATES = {subscriptions.ACTIVE: pb.SUBSCRIPTION_STATE_ACTIVE,
                       subscriptions.CANCELLED: pb.SUBSCRIPTION_STATE_CANCELLED}
GRANT_STATES = {"active": pb.GRANT_STATE_ACTIVE, "expired": pb.GRANT_STATE_EXPIRED}
LEASE_STATES = {leases.ACTIVE: pb.LEASE_STATE_ACTIVE, leases.SETTLED: pb.LEASE_STATE_SETTLED}
JOB_FIELDS = ("kind", "input_tokens", "output_tokens", "gpu_ms", "latency_target_ms",
              "max_cost", "resource_class")


def job_from_proto(msg: pb.JobDescription) -> Record:
    return {**{name: getattr(msg, name) for name in JOB_FIELDS}, "models": list(msg.models)}


def quote_to_proto(q: Record) -> pb.Quote:
    return pb.Quote(
        quote_id=q["quote_id"], job=pb.JobDescription(**q["job"]),
        expire_time=convert.timestamp(q["expire_ms"]),
        create_time=convert.timestamp(q["create_ms"]),
        offers=[pb.QuoteOffer(
            rank=o["rank"], worker_id=o["worker_id"], endpoint=o["endpoint"], model=o["model"],
            model_parameters=o["model_parameters"], resource_class=o["resource_class"],
            prices=convert.prices_to_proto(o["prices"]), cost=pb.CostEstimate(**o["cost"]),
            latency=pb.LatencyEstimate(**o["latency"]),
            meets_latency_target=o["meets_latency_target"], within_max_cost=o["within_max_cost"],
            eligible=o["eligible"]) for o in q["offers"]])


def plan_to_proto(p: Record) -> pb.Plan:
    return pb.Plan(plan_id=p["plan_id"], owner_id=p["owner_id"], display_name=p["display_name"],
                   credits_per_period=p["credits_per_period"],
                   period_seconds=p["period_ms"] // 1000, rollover_periods=p["rollover_periods"],
                   priority=p["priority"], create_time=convert.timestamp(p["create_ms"]))


def subscription_to_proto(s: Record) -> pb.Subscription:
    return pb.Subscription(subscription_id=s["subscription_id"], plan_id=s["plan_id"],
                           wallet_id=s["wallet_id"], state=SUBSCRIPTION_STATES[s["state"]],
                           start_time=convert.timestamp(s["start_ms"]),
                           next_grant_time=convert.timestamp(s["next_ms"]),
                           periods_granted=s["next_period"])


def grant_to_proto(g: Record) -> pb.Grant:
    return pb.Grant(grant_id=g["grant_id"], subscription_id=g["subscription_id"],
                    plan_id=g["plan_id"], wallet_id=g["wallet_id"], period=g["period"],
                    amount=g["amount"], remaining=g["remaining"], reserved=g["reserved"],
                    spent=g["spent"], returned=g["returned"], priority=g["priority"],
                    start_time=convert.timestamp(g["start_ms"]),
                    expire_time=convert.timestamp(g["expire_ms"]), state=GRANT_STATES[g["state"]])


def lease_to_proto(lease: Record) -> pb.Lease:
    statement = lease["statement"]
    return pb.Lease(
        lease_id=lease["lease_id"], wallet_id=lease["wallet_id"], worker_id=lease["worker_id"],
        endpoint=lease["endpoint"], state=LEASE_STATES[lease["state"]],
        start_time=convert.timestamp(lease["start_ms"]),
        end_time=convert.timestamp(lease["end_ms"]),
        prices=convert.prices_to_proto({k: lease[k] for k in (
            "reserved_hour_price", "unused_reserved_bps")}),
        reserved_ms=lease["reserved_ms"], held=lease["held"], used_ms=lease["used_ms"],
        charged=lease["charged"], worker_payout=lease["worker_payout"],
        platform_fee=lease["platform_fee"], released=lease["released"],
        settle_time=convert.timestamp(lease["settle_ms"]) if lease["settle_ms"] else None,
        key_id=statement.get("key_id", ""),
        signature=base64.b64decode(statement.get("signature", "")),
        signed_payload=base64.b64decode(statement.get("signed_payload", "")),
        quote_id=lease["quote_id"])


class PricingServicer(pb_grpc.PricingServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    async def _live(self) -> set[str]:
        return set(await self.s.live_ids())

    # -- quotes ---------------------------------------------------------------------------

    @unary
    async def Quote(self, request, context):
        p = await self.s.authenticate(context, "agent", "owner")
        job, live = job_from_proto(request.job), await self._live()
        quote = await self.s.mutate(p, "Quote", request, lambda tx, now: quotes.create(
            tx, p, job, request.lock_seconds, live, leases.leased_worker_ids(tx, now), now))
        return pb.QuoteResponse(quote=quote_to_proto(quote))

    @unary
    async def GetQuote(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        quote = await self.s.read(lambda tx: quotes.get(tx, p, request.quote_id))
        return pb.GetQuoteResponse(quote=quote_to_proto(quote))

    # -- subscriptions ----------------------------------------------------------------------

    @unary
    async def CreatePlan(self, request, context):
        p = await self.s.authenticate(context, "owner")
        plan = await self.s.mutate(p, "CreatePlan", request, lambda tx, now: (
            subscriptions.create_plan(tx, p.owner_id, request.display_name,
                                      request.credits_per_period, request.period_seconds,
                                      request.rollover_periods, request.priority, now)))
        return pb.CreatePlanResponse(plan=plan_to_proto(plan))

    @unary
    async def ListPlans(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: subscriptions.list_plans(
            tx, access.listed_owner(p, request.owner_id), request.page_size,
            request.page_token))
        return pb.ListPlansResponse(plans=[plan_to_proto(x) for x in page["plans"]],
                                    next_page_token=page["next_page_token"])

    @unary
    async def Subscribe(self, request, context):
        p = await self.s.authenticate(context, "owner")
        sub = await self.s.mutate(p, "Subscribe", request, lambda tx, now: (
            subscriptions.subscribe(tx, p.owner_id, request.plan_id, request.wallet_id, now)))
        return pb.SubscribeResponse(subscription=subscription_to_proto(sub))

    @unary
    async def CancelSubscription(self, request, context):
        p = await self.s.authenticate(context, "owner")
        sub = await self.s.mutate(p, "CancelSubscription", request, lambda tx, now: (
            subscriptions.cancel(tx, p.owner_id, request.subscription_id, now)))
        return pb.CancelSubscriptionResponse(subscription=subscription_to_proto(sub))

    @unary
    async def ListSubscriptions(self, request, context):
        p = await self.s.authenticate(context, *OVERSEERS)
        page = await self.s.read(lambda tx: subscriptions.list_subscriptions(
            tx, access.listed_owner(p, request.owner_id), request.page_size,
            request.page_token))
        return pb.ListSubscriptionsResponse(
            subscriptions=[subscription_to_proto(x) for x in page["subscriptions"]],
            next_page_token=page["next_page_token"])

    @unary
    async def ListGrants(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        page = await self.s.read(lambda tx: subscriptions.list_grants(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListGrantsResponse(grants=[grant_to_proto(g) for g in page["grants"]],
                                     next_page_token=page["next_page_token"],
                                     balance=convert.balance(page["balance"]),
                                     reserved_credits=page["reserved_credits"],
                                     purchased=page["balance"]["posted"]
                                     - page["balance"].get("credits", 0))

    # -- leases -----------------------------------------------------------------------------

    @unary
    async def CreateLease(self, request, context):
        p = await self.s.authenticate(context, "agent")
        self.s.refuse_when_draining()
        live = await self._live()
        lease = await self.s.mutate(p, "CreateLease", request, lambda tx, now: leases.create(
            tx, p, request.worker_id, request.duration_seconds, request.quote_id, live, now))
        return pb.CreateLeaseResponse(lease=lease_to_proto(lease))

    @unary
    async def GetLease(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        lease = await self.s.read(lambda tx: leases.with_usage(
            tx, leases.get(tx, p, request.lease_id)))
        return pb.GetLeaseResponse(lease=lease_to_proto(lease))

    @unary
    async def ListLeases(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        page = await self.s.read(lambda tx: leases.list_leases(
            tx, p, request.wallet_id, request.page_size, request.page_token))
        return pb.ListLeasesResponse(leases=[lease_to_proto(x) for x in page["leases"]],
                                     next_page_token=page["next_page_token"])

    @unary
    async def EndLease(self, request, context):
        p = await self.s.authenticate(context, "agent", "owner")
        signer = self.s.receipt_keyring.signer  # lease statements and job receipts
        lease = await self.s.mutate(p, "EndLease", request, lambda tx, now: (
            lease_settlement.end(tx, p, request.lease_id, now, self.s.config, signer)))
        return pb.EndLeaseResponse(lease=lease_to_proto(lease))

    @unary
    async def AuthorizeLeaseJob(self, request, context):
        p = await self.s.authenticate(context, "agent")
        self.s.refuse_when_draining()
        key_id = self.s.keyring.active_id
        auth = await self.s.mutate(p, "AuthorizeLeaseJob", request, lambda tx, now: (
            leases.authorize_job(tx, p, request.lease_id, request.model, now, key_id)))
        signer = self.s.keyring.signer_for(auth["voucher_key_id"])
        token = authorizations.voucher_token(auth, signer)
        return pb.AuthorizeLeaseJobResponse(
            authorization=convert.authorization(auth, voucher=token))
