"""PricingService and the quote fields of Authorize against a real broker process, with
workers registered over gRPC (no worker daemon): bad input is refused with its reason
and changes nothing; a quote locks prices until it expires; grpcurl can call it all."""

import json
import subprocess
import time

import grpc
import pytest

from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import pricing_service_pb2 as pb
from broker.v1 import pricing_service_pb2_grpc as pb_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb

from .conftest import _Bound, aio_channel, bearer, open_session, prices_dict, rid, run, unchanged
from .test_grpcurl import find_grpcurl

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PRECONDITION, EXISTS = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS
LEASE_TERMS = {"reserved_hour_price": 3_600_000, "unused_reserved_bps": 2_500}


def pricing(h, key: str) -> _Bound:
    return _Bound(pb_grpc.PricingServiceStub(h.channel), bearer(key))


def register(h, worker_id: str = "", **prices) -> str:
    """A worker registered (and so live) with a full price sheet."""
    sheet = {"gpu_second_price": 1000, **LEASE_TERMS, **prices}
    return h.worker.registry.RegisterWorker(registry_pb.RegisterWorkerRequest(
        request_id=rid(), endpoint="127.0.0.1:7001", worker_id=worker_id,
        capabilities=registry_pb.Capabilities(resource_class="cpu", models=["tiny-lm"],
                                              meter="cpu_time"),
        prices=res_pb.PriceSheet(**sheet))).worker_id


def quote(h, *, lock_seconds=60, **job) -> pb.Quote:
    job = {"kind": "generate", "models": ["tiny-lm"], "output_tokens": 10, **job}
    return pricing(h, h.creds["agent_api_key"]).Quote(pb.QuoteRequest(
        request_id=rid(), job=pb.JobDescription(**job), lock_seconds=lock_seconds)).quote


def test_bad_quotes(h):
    register(h)
    agent = pricing(h, h.creds["agent_api_key"])
    for job, code, reason in (
            ({"kind": "train"}, INVALID, "UNKNOWN_JOB_KIND"),
            ({"kind": "generate", "models": ["gpt-9"]}, NOT_FOUND, "MODEL_NOT_FOUND"),
            ({"kind": "generate", "models": ["tiny-lm", "tiny-lm"]}, INVALID, "INVALID_ARGUMENT"),
            ({"kind": "burn"}, INVALID, "INVALID_ARGUMENT"),
            ({"kind": "generate", "models": ["tiny-lm"], "max_cost": -1}, INVALID,
             "INVALID_ARGUMENT")):
        with unchanged(h, code, reason):
            agent.Quote(pb.QuoteRequest(request_id=rid(), job=pb.JobDescription(**job)))
    with unchanged(h, INVALID, "INVALID_ARGUMENT"):
        agent.Quote(pb.QuoteRequest(request_id=rid(), lock_seconds=3601, job=pb.JobDescription(
            kind="generate", models=["tiny-lm"])))
    with unchanged(h, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
        pricing(h, h.creds["worker_api_key"]).Quote(pb.QuoteRequest(request_id=rid()))


def test_a_quote_locks_prices_until_it_expires(h):
    worker_id = register(h, gpu_second_price=1000, call_price=5)
    q = quote(h, lock_seconds=5)  # long enough for the steps below on a loaded machine
    (offer,) = q.offers
    assert (offer.worker_id, offer.rank, offer.eligible) == (worker_id, 1, True)
    assert prices_dict(offer.prices) == {"gpu_second_price": 1000, "input_tokens_1k_price": 0,
                                         "output_tokens_1k_price": 0, "call_price": 5}
    # The worker raises its prices; a voucher bound to the quote keeps the quoted ones.
    register(h, worker_id, gpu_second_price=5000, call_price=50)
    auth = h.agent.auths.Authorize(auth_pb.AuthorizeRequest(
        request_id=rid(), amount=100_000, quote_id=q.quote_id,
        scope=res_pb.Scope(worker_id=worker_id))).authorization
    assert auth.quote_id == q.quote_id and [o.worker_id for o in auth.offers] == [worker_id]
    assert auth.offers[0].prices.gpu_second_price == 1000

    async def grant_prices(voucher):
        async with aio_channel(h.target) as ch:
            session = await open_session(ch, h.creds["worker_api_key"], voucher, worker_id,
                                         request_id=rid())
            await session.abandon()
            return prices_dict(session.grant.prices)

    assert run(grant_prices(auth.voucher))["gpu_second_price"] == 1000
    plain = h.agent.authorize(100_000, scope=res_pb.Scope(worker_id=worker_id))
    assert run(grant_prices(plain.voucher))["gpu_second_price"] == 5000
    time.sleep(max(0.0, q.expire_time.ToMilliseconds() / 1000 - time.time()) + 0.2)
    with unchanged(h, PRECONDITION, "QUOTE_EXPIRED"):
        h.agent.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid(), amount=100_000, quote_id=q.quote_id,
            scope=res_pb.Scope(worker_id=worker_id)))
    with unchanged(h, PRECONDITION, "QUOTE_EXPIRED"):
        h.agent.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid(), amount=100_000, quote_id=q.quote_id, select_best_offer=True))
    with unchanged(h, NOT_FOUND, "QUOTE_NOT_FOUND"):
        h.agent.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid(), amount=100_000, quote_id="quo_0000", select_best_offer=True))


def test_bad_plans_and_a_second_subscription(h):
    owner = pricing(h, h.creds["owner_api_key"])
    for fields, reason in (
            ({"credits_per_period": 0, "period_seconds": 60}, "INVALID_AMOUNT"),
            ({"credits_per_period": -10, "period_seconds": 60}, "INVALID_AMOUNT"),
            ({"credits_per_period": 10, "period_seconds": 0}, "INVALID_PERIOD"),
            ({"credits_per_period": 10, "period_seconds": -60}, "INVALID_PERIOD"),
            ({"credits_per_period": 10, "period_seconds": 60, "rollover_periods": -1},
             "INVALID_PERIOD")):
        with unchanged(h, INVALID, reason):
            owner.CreatePlan(pb.CreatePlanRequest(request_id=rid(), **fields))
    plan = owner.CreatePlan(pb.CreatePlanRequest(
        request_id=rid(), display_name="monthly", credits_per_period=500_000,
        period_seconds=30 * 86_400)).plan
    sub = owner.Subscribe(pb.SubscribeRequest(request_id=rid(), plan_id=plan.plan_id,
                                              wallet_id=h.wallet_id)).subscription
    assert sub.state == pb.SUBSCRIPTION_STATE_ACTIVE and sub.periods_granted == 1
    with unchanged(h, EXISTS, "SUBSCRIPTION_EXISTS"):
        owner.Subscribe(pb.SubscribeRequest(request_id=rid(), plan_id=plan.plan_id,
                                            wallet_id=h.wallet_id))
    other = h.new_tenant()
    with unchanged(h, NOT_FOUND, "WALLET_NOT_FOUND"):
        owner.Subscribe(pb.SubscribeRequest(request_id=rid(), plan_id=plan.plan_id,
                                            wallet_id=other.wallet_id))
    with unchanged(h, NOT_FOUND, "PLAN_NOT_FOUND"):
        pricing(h, other.owner.key).Subscribe(pb.SubscribeRequest(
            request_id=rid(), plan_id=plan.plan_id, wallet_id=other.wallet_id))
    # The agent sees its grant and the breakdown of its balance.
    listed = pricing(h, h.creds["agent_api_key"]).ListGrants(pb.ListGrantsRequest())
    (grant,) = listed.grants
    assert (grant.amount, grant.remaining, grant.state) == (500_000, 500_000,
                                                            pb.GRANT_STATE_ACTIVE)
    assert (listed.balance.credits, listed.purchased) == (500_000, 5_000_000)
    assert h.agent.balance().credits == 500_000


def test_bad_leases(h):
    worker_id = register(h)
    no_leases = register(h, reserved_hour_price=0)
    agent = pricing(h, h.creds["agent_api_key"])

    def lease(**fields):
        return agent.CreateLease(pb.CreateLeaseRequest(request_id=rid(), **fields)).lease

    for fields, code, reason in (
            ({"worker_id": worker_id, "duration_seconds": 0}, INVALID, "INVALID_ARGUMENT"),
            ({"worker_id": worker_id, "duration_seconds": -1}, INVALID, "INVALID_ARGUMENT"),
            ({"worker_id": "wrk_nope", "duration_seconds": 60}, NOT_FOUND, "WORKER_NOT_FOUND"),
            ({"worker_id": no_leases, "duration_seconds": 60}, PRECONDITION,
             "LEASE_NOT_OFFERED")):
        with unchanged(h, code, reason):
            lease(**fields)
    held = lease(worker_id=worker_id, duration_seconds=120)
    assert held.held == 120_000 and held.state == pb.LEASE_STATE_ACTIVE
    with unchanged(h, PRECONDITION, "WORKER_ALREADY_LEASED"):
        lease(worker_id=worker_id, duration_seconds=60)
    # A leased worker is not quoted to anyone.
    assert [o.worker_id for o in quote(h).offers] == [no_leases]
    ended = agent.EndLease(pb.EndLeaseRequest(request_id=rid(), lease_id=held.lease_id)).lease
    assert ended.state == pb.LEASE_STATE_SETTLED and ended.charged == 30_000  # a quarter
    with unchanged(h, PRECONDITION, "LEASE_ALREADY_SETTLED"):
        agent.EndLease(pb.EndLeaseRequest(request_id=rid(), lease_id=held.lease_id))
    with unchanged(h, PRECONDITION, "LEASE_ENDED"):
        agent.AuthorizeLeaseJob(pb.AuthorizeLeaseJobRequest(request_id=rid(),
                                                            lease_id=held.lease_id))
    assert list(h.summary().violations) == []


def test_grpcurl_quotes_and_leases(h):
    register(h, output_tokens_1k_price=750, call_price=2)
    binary = find_grpcurl()

    def call(method: str, body: dict) -> dict:
        result = subprocess.run(
            [binary, "-plaintext", "-H", f"authorization: Bearer {h.creds['agent_api_key']}",
             "-d", json.dumps(body), h.target, f"broker.v1.PricingService/{method}"],
            capture_output=True, text=True, timeout=30, cwd=h.broker.data_dir.parent)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    # grpcurl prints the proto field names, and int64 as strings.
    q = call("Quote", {"job": {"kind": "generate", "models": ["tiny-lm"],
                               "input_tokens": "20", "output_tokens": "64"}})["quote"]
    assert q["quote_id"].startswith("quo_") and q["offers"][0]["rank"] == 1
    # No GPU-time history yet: 64 output tokens at 750 per 1k (48) and the call (2).
    assert q["offers"][0]["cost"]["expected"] == "50"
    lease = call("CreateLease", {"worker_id": q["offers"][0]["worker_id"],
                                 "duration_seconds": "60"})["lease"]
    assert lease["held"] == "60000" and lease["state"] == "LEASE_STATE_ACTIVE"


@pytest.fixture(autouse=True)
def _audit(h):
    yield
    assert list(h.summary().violations) == []
