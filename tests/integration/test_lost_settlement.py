"""A worker daemon whose finish was settled but whose answer was lost (a proxy between
worker and broker drops the connection instead of passing the settlement on): the
worker resumes the session, the broker answers with the settlement (docs/wire.md, "A
finish answered again"), and the agent's Execute still ends COMPLETED with the receipt
the broker issued, charged once. On the per-session `Meter` stream and on the worker's
one `MeterWorker` stream."""

from __future__ import annotations

import pytest

from broker.v1 import metering_service_pb2 as pb
from worker.v1 import worker_service_pb2 as worker_pb

from .conftest import burn_job, usage_dict
from .proxied_world import proxied_worker_world

METER = "/broker.v1.MeteringService/Meter"
METER_WORKER = "/broker.v1.MeteringService/MeterWorker"


def meter_settled(raw: bytes) -> bool:
    return pb.MeterResponse.FromString(raw).WhichOneof("kind") == "settled"


def batch_settled(raw: bytes) -> bool:
    return any(r.WhichOneof("kind") == "settled"
               for r in pb.MeterWorkerResponse.FromString(raw).results)


@pytest.fixture(scope="module", params=[False, True], ids=["meter", "meter-worker"])
def p(request, tmp_path_factory):
    batched = request.param
    with proxied_worker_world(tmp_path_factory.mktemp("lost-settlement"),
                              {"batched_metering": batched}) as (world, proxy):
        yield world, proxy, (METER_WORKER, batch_settled) if batched else (METER,
                                                                          meter_settled)


def test_the_agent_gets_completed_with_the_receipt_when_the_settlement_is_lost(p):
    w, proxy, (method, settled) = p
    auth = w.authorize(1_000_000)
    before = w.h.summary()
    proxy.lose_next(method, settled)
    result = w.execute(auth.voucher, burn_job(300)).result
    assert [c for c in proxy.captured if c.direction == "lost"], "no settlement was lost"
    assert result.status == worker_pb.JOB_STATUS_COMPLETED, result.error
    stored = w.wait_settled(auth.authorization_id)
    receipt = result.receipt
    assert receipt.receipt_id == stored.receipt_id and receipt.outcome == "FINISHED"
    assert receipt.charged == stored.charged > 0
    assert usage_dict(receipt.usage) == usage_dict(result.usage)
    # Settled once: one hold, posted once, one payout and one fee.
    assert w.h.summary().transfer_count - before.transfer_count == 4
    assert w.violations() == []
