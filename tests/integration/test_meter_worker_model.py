"""The per-session metering properties (tests/core/test_model.py, test_session.py), run
through MeterWorker batches against a real broker: a model-based test. Each step sends
one batch with an item for any of the example's sessions, good or bad (out of order, a
stale or repeated seq, usage going backwards, a jump that leaves less than an interval
of the hold, finishes, resumes, a session of no one), sometimes with a forged batch
signature, sometimes with the wallet frozen (the kill switch). Every item's outcome must
be the one session's rule alone, whatever its neighbours did: the charge is the usage's,
capped at the hold; STOP one interval ahead, or REVOKED; refused items change nothing;
a session settles exactly once, at its own usage, and a finish that repeats the one
that settled it, or a resume, gets its settlement again. After each example every session is
settled and its receipt and the ledger audit agree with the model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from nacl.signing import SigningKey

from broker.v1 import metering_service_pb2 as pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common.status import error_info
from worker.worker_stream import ItemRefused

from .conftest import aio_channel, rid
from .spend_helpers import register_signing_worker
from .test_meter_worker import RawStream, finish, item_error, report, sign_batch

SESSIONS = 3
INTERVAL_COST = 1_000  # one report interval (1 s) of GPU time at 1 micro-credit per GPU-ms
SMALL = 10  # the most a good report adds: far from any hold, no rate can reach it
ACTIONS = ("none", "good", "jump", "skip", "stale", "retransmit", "backwards", "finish",
           "finish_backwards", "resume")
Code = grpc.StatusCode


@dataclass
class Model:
    """One session as the per-session rules say it must be."""

    session_id: str
    authorization_id: str
    budget: int
    seq: int = 0
    gpu_ms: int = 0
    charged: int = 0
    stop: int = 0  # a pb.StopReason once STOP was sent
    settled: bool = False
    expected_charge: int | None = None  # what its receipt must say, once settled
    # REVOKED sessions the worker leaves unfinished are settled by the broker two
    # intervals later (killswitch.py), on the acknowledged usage: either may happen.
    may_be_swept: bool = False
    # Settled by a finish: its usage and its answer, which a finish that repeats it (and
    # a resume) gets again (core/settled.py). None when the broker settled it.
    final_gpu: int | None = None
    first: pb.SessionSettled | None = None


def test_per_session_properties_hold_through_batches(h):
    worker_id, usage_key = register_signing_worker(h)  # 1 micro-credit per GPU-ms
    tenant = h.new_tenant(treasury=50_000_000, wallet_funding=4_000_000)
    api_key = h.creds["worker_api_key"]

    class Batches(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.raw = self.loop.run_until_complete(self._stream())
            self.sessions: list[Model] = []
            self.frozen = False

        async def _stream(self) -> RawStream:
            self.opened = aio_channel(h.target)
            channel = await self.opened.__aenter__()
            return RawStream(channel, api_key, worker_id, usage_key)

        def send(self, **items) -> pb.MeterWorkerResponse:
            return self.loop.run_until_complete(self.raw.send(**items))

        @initialize(budgets=st.lists(st.integers(20_000, 60_000), min_size=SESSIONS,
                                     max_size=SESSIONS))
        def open_sessions(self, budgets):
            auths = [tenant.agent.authorize(b, ttl_seconds=600) for b in budgets]
            opened = self.send(opens=[pb.WorkerOpen(ref=str(i), open=pb.OpenSession(
                voucher=a.voucher)) for i, a in enumerate(auths)])
            for result, auth, budget in zip(opened.results, auths, budgets, strict=True):
                assert result.grant.budget == budget and result.grant.last_seq == 0
                self.sessions.append(Model(result.session_id, auth.authorization_id, budget))

        @rule(frozen=st.booleans())
        def freeze(self, frozen):
            call = tenant.owner.wallets.FreezeWallet if frozen else \
                tenant.owner.wallets.UnfreezeWallet
            request = (wallet_pb.FreezeWalletRequest if frozen else
                       wallet_pb.UnfreezeWalletRequest)(request_id=rid(),
                                                        wallet_id=tenant.wallet_id)
            call(request)
            self.frozen = frozen

        @rule(actions=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, SMALL)),
                               min_size=SESSIONS, max_size=SESSIONS),
              stranger=st.booleans(), forged=st.integers(0, 7).map(lambda n: n == 0))
        def batch(self, actions, stranger, forged):
            resumes, reports, finishes = [], [], []  # (model or None, message, action)
            for ses, (action, delta) in zip(self.sessions, actions, strict=True):
                if action in ("backwards", "finish_backwards") and ses.gpu_ms == 0:
                    continue  # (counters cannot go below zero)
                if action == "resume":
                    resumes.append((ses, ses.session_id, action))
                elif action in ("finish", "finish_backwards"):
                    gpu = ses.gpu_ms + delta if action == "finish" else ses.gpu_ms - 1
                    finishes.append((ses, finish(ses.session_id, gpu), action))
                elif action != "none":
                    seq, gpu = {
                        "good": (ses.seq + 1, ses.gpu_ms + delta),
                        "jump": (ses.seq + 1, max(ses.gpu_ms, ses.budget - 500 + 40 * delta)),
                        "skip": (ses.seq + 2, ses.gpu_ms + delta),
                        "stale": (ses.seq, ses.gpu_ms + delta + 1),
                        "retransmit": (ses.seq, ses.gpu_ms),
                        "backwards": (ses.seq + 1, ses.gpu_ms - 1)}[action]
                    reports.append((ses, report(ses.session_id, seq, gpu), action))
            if stranger:
                reports.append((None, report("ses_" + "0" * 24, 1, 5), "stranger"))
            signed_reports = [m for _, m, _ in reports]
            signed_finishes = [m for _, m, _ in finishes]
            signature = sign_batch(SigningKey.generate() if forged else usage_key,
                                   signed_reports, signed_finishes)
            answer = self.send(resumes=[m for _, m, _ in resumes], reports=signed_reports,
                               finishes=signed_finishes, signature=signature)
            items = [*resumes, *reports, *finishes]
            assert len(answer.results) == len(items)
            for (ses, message, action), result in zip(items, answer.results, strict=True):
                if ses is None:
                    item_error(result, Code.NOT_FOUND, "SESSION_NOT_FOUND")
                elif action == "resume":
                    self.check_resume(ses, result)
                elif action.startswith("finish"):
                    self.check_finish(ses, message, result, forged)
                else:
                    self.check_report(ses, message, action, result, forged)

        # -- the per-session rules ----------------------------------------------------

        def swept(self, ses: Model, result: pb.SessionResult) -> bool:
            """The broker settled a REVOKED session on its own meanwhile."""
            if ses.may_be_swept and result.WhichOneof("kind") == "error" and \
                    error_info(ItemRefused(result.error)).reason == "SESSION_ALREADY_SETTLED":
                ses.settled, ses.expected_charge = True, ses.charged
                return True
            return False

        def check_resume(self, ses: Model, result: pb.SessionResult) -> None:
            """A settled session is resumed with its settlement, however it settled."""
            if not ses.settled and ses.may_be_swept and \
                    result.WhichOneof("kind") == "settled":
                ses.settled, ses.expected_charge = True, ses.charged  # swept meanwhile
            if ses.settled:
                assert result.WhichOneof("kind") == "settled", result
                if ses.first is not None:
                    assert result.settled == ses.first
                else:
                    receipt = result.settled.receipt
                    assert (receipt.outcome, receipt.charged, receipt.usage.gpu_ms) == (
                        "STOPPED", ses.expected_charge, ses.gpu_ms), result
                return
            grant = result.grant
            assert (grant.last_seq, grant.charged, grant.usage.gpu_ms, grant.stopped) == (
                ses.seq, ses.charged, ses.gpu_ms, bool(ses.stop)), result

        def check_report(self, ses: Model, message: pb.SessionUsageReport, action: str,
                         result: pb.SessionResult, forged: bool) -> None:
            seq, gpu = message.seq, message.usage.gpu_ms
            if forged:
                item_error(result, Code.PERMISSION_DENIED, "USAGE_SIGNATURE_INVALID")
            elif ses.settled or self.swept(ses, result):
                item_error(result, Code.FAILED_PRECONDITION, "SESSION_ALREADY_SETTLED")
            elif ses.stop:
                item_error(result, Code.FAILED_PRECONDITION, "USAGE_AFTER_STOP")
            elif seq == ses.seq and gpu == ses.gpu_ms:  # a retransmission: the same answer
                assert (result.ack.seq, result.ack.charged, result.ack.remaining) == (
                    seq, ses.charged, ses.budget - ses.charged), result
                assert not result.HasField("stop")
            elif seq != ses.seq + 1:
                item_error(result, Code.INVALID_ARGUMENT, "USAGE_OUT_OF_ORDER")
            elif gpu < ses.gpu_ms:
                item_error(result, Code.INVALID_ARGUMENT, "USAGE_NOT_MONOTONIC")
            else:
                charged = min(gpu, ses.budget)
                assert (result.ack.seq, result.ack.charged, result.ack.remaining) == (
                    seq, charged, ses.budget - charged), result
                stop = result.stop.reason if result.HasField("stop") else 0
                if self.frozen:
                    assert stop == pb.STOP_REASON_REVOKED, result
                    ses.may_be_swept = True
                elif charged + INTERVAL_COST >= ses.budget:  # the next interval would reach it
                    assert stop == pb.STOP_REASON_BUDGET_EXHAUSTED, result
                elif charged + (charged - ses.charged) * INTERVAL_COST < ses.budget:
                    assert stop == 0, result  # no rate, however fast, reaches the hold
                else:  # (a rate projection: depends on the time between the reports)
                    assert stop in (0, pb.STOP_REASON_BUDGET_EXHAUSTED), result
                if stop:
                    assert (result.stop.charged, result.stop.remaining) == (
                        charged, ses.budget - charged)
                ses.seq, ses.gpu_ms, ses.charged, ses.stop = seq, gpu, charged, stop

        def check_finish(self, ses: Model, message: pb.SessionFinish,
                         result: pb.SessionResult, forged: bool) -> None:
            gpu = message.finish.usage.gpu_ms
            if ses.settled or self.swept(ses, result):
                if ses.first is not None and gpu == ses.final_gpu and not forged:
                    # It repeats the finish that settled the session: the same answer.
                    assert result.WhichOneof("kind") == "settled", result
                    assert result.settled == ses.first
                else:
                    item_error(result, Code.FAILED_PRECONDITION, "SESSION_ALREADY_SETTLED")
            elif forged:
                item_error(result, Code.PERMISSION_DENIED, "USAGE_SIGNATURE_INVALID")
            elif gpu < ses.gpu_ms:
                item_error(result, Code.INVALID_ARGUMENT, "USAGE_NOT_MONOTONIC")
            else:
                receipt = result.settled.receipt
                charged = min(gpu, ses.budget)
                assert (receipt.charged, receipt.held, receipt.released) == (
                    charged, ses.budget, ses.budget - charged), result
                assert receipt.outcome == ("STOPPED" if ses.stop else "FINISHED")
                ses.settled, ses.expected_charge = True, charged
                ses.final_gpu, ses.first = gpu, result.settled

        def teardown(self) -> None:
            try:
                if self.frozen:
                    self.freeze(False)
                open_ones = [s for s in self.sessions if not s.settled]
                if open_ones:
                    answer = self.send(finishes=[finish(s.session_id, s.gpu_ms)
                                                 for s in open_ones])
                    for ses, result in zip(open_ones, answer.results, strict=True):
                        self.check_finish(ses, finish(ses.session_id, ses.gpu_ms), result,
                                          False)
                for ses in self.sessions:  # settled once, at the model's charge
                    stored = tenant.owner.receipt(ses.authorization_id)
                    assert (stored.charged, stored.held) == (ses.expected_charge, ses.budget)
            finally:
                self.raw.call.cancel()
                self.loop.run_until_complete(self.opened.__aexit__(None, None, None))
                self.loop.close()

    run_state_machine_as_test(Batches, settings=settings(
        max_examples=20, stateful_step_count=15, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
    assert list(h.summary().violations) == []
