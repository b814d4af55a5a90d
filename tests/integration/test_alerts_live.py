"""Anomaly alerts against a real broker: a synthetic burst raises an alert (streamed to
the watching owner, listed, and freezing the wallet as its policy asks) while a quiet
control agent with the same policy raises none."""

from __future__ import annotations

import threading

import grpc
import pytest

from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb

from .spend_helpers import broker_harness, policy, set_policy, wait_until
from .test_metrics import Scrape

Code = grpc.StatusCode
RULES = pol_pb.AlertRules(burst_factor=3, min_authorizations_per_minute=5,
                          min_spend_per_hour=10**12)  # a burst: more than 15 in a minute


@pytest.fixture(scope="module")
def hm(tmp_path_factory):
    with broker_harness(tmp_path_factory.mktemp("alerts")) as h:
        yield h


def test_a_synthetic_burst_alerts_and_the_quiet_control_does_not(hm):
    burst, quiet = hm.new_tenant(), hm.new_tenant()
    set_policy(hm, burst.owner, alerts=pol_pb.AlertRules(
        burst_factor=3, min_authorizations_per_minute=5, min_spend_per_hour=10**12,
        freeze_on=[pol_pb.ALERT_KIND_AUTHORIZATION_BURST]))
    set_policy(hm, quiet.owner, alerts=RULES)
    streamed: list = []
    call = policy(hm, burst.owner).WatchAlerts(pol_pb.WatchAlertsRequest(), timeout=60)

    def watch():
        try:
            for message in call:
                streamed.extend(message.alerts)
        except grpc.RpcError as error:
            assert error.code() == Code.CANCELLED, error

    watcher = threading.Thread(target=watch)
    watcher.start()
    scope = res_pb.Scope(model="tiny-lm")
    for _ in range(4):  # the control: a few, as usual
        quiet.agent.authorize(1000, scope=scope)
    refused = 0
    # 60 in a row: more than 15 in some minute however slow the machine is.
    for _ in range(60):
        try:
            burst.agent.authorize(1000, scope=scope)
        except grpc.RpcError as error:
            assert error.code() == Code.FAILED_PRECONDITION  # WALLET_FROZEN after the alert
            refused += 1
    assert refused >= 5
    # The burst froze the wallet; the refusals that followed are a run of denials.
    wait_until(lambda: len(streamed) >= 2, what="the streamed alerts")
    call.cancel()
    watcher.join(10)
    alert, run = streamed
    assert alert.kind == pol_pb.ALERT_KIND_AUTHORIZATION_BURST
    assert (alert.wallet_id, alert.owner_id) == (burst.wallet_id, burst.owner_id)
    assert alert.observed == 16 and alert.baseline == 5 and alert.wallet_frozen
    assert (run.kind, run.subject) == (pol_pb.ALERT_KIND_DENIAL_RUN, "WALLET_FROZEN")
    listed = policy(hm, burst.owner).ListAlerts(pol_pb.ListAlertsRequest()).alerts
    assert [a.alert_id for a in listed] == [run.alert_id, alert.alert_id]  # newest first
    # The quiet control: nothing, also from the admin's ledger-wide view.
    assert not policy(hm, quiet.owner).ListAlerts(pol_pb.ListAlertsRequest()).alerts
    everything = policy(hm, hm.admin).ListAlerts(pol_pb.ListAlertsRequest(
        wallet_id=quiet.wallet_id)).alerts
    assert everything == []
    # Counted in the Prometheus metrics too (by the daemon, within a sweep interval).
    def counted(kind: str) -> float:
        samples = Scrape(hm.broker.metrics_url).families.get("broker_alerts")
        return sum(s.value for s in samples.samples if s.name == "broker_alerts_total"
                   and s.labels.get("kind") == kind) if samples else 0

    wait_until(lambda: counted("denial_run") == 1, what="the alert metric")
    assert counted("authorization_burst") == 1


def test_alerts_page_and_watch_from_a_cursor(hm):
    t = hm.new_tenant()
    set_policy(hm, t.owner, alerts=pol_pb.AlertRules(denial_run=2))
    for _ in range(3):  # three runs of two denials, each ended by a success
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                t.agent.authorize(10**12)
        t.agent.authorize(10)
    first = policy(hm, t.owner).ListAlerts(pol_pb.ListAlertsRequest(page_size=2))
    second = policy(hm, t.owner).ListAlerts(pol_pb.ListAlertsRequest(
        page_size=2, page_token=first.next_page_token))
    assert len(first.alerts) == 2 and len(second.alerts) == 1 and not second.next_page_token
    alerts = [*first.alerts, *second.alerts]
    assert {a.kind for a in alerts} == {pol_pb.ALERT_KIND_DENIAL_RUN}
    assert all(a.subject == "INSUFFICIENT_FUNDS" for a in alerts)
    oldest = alerts[-1]
    stream = policy(hm, t.owner).WatchAlerts(pol_pb.WatchAlertsRequest(
        after_alert_id=oldest.alert_id), timeout=10)
    replayed = next(stream).alerts
    stream.cancel()
    assert [a.alert_id for a in replayed] == [a.alert_id for a in reversed(alerts[:2])]
