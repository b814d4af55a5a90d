"""The broker calls the console makes, with the signed-in key: BrokerClient plus the
owner's approvals, alerts, statements and receipt key. Nothing here has powers of its
own: every call carries the session's API key and the broker decides."""

from __future__ import annotations

import grpc

from ..client import BrokerClient, BrokerClientError
from ..v1 import policy_service_pb2 as policy_pb
from ..v1 import statement_service_pb2 as statement_pb


class ConsoleClient(BrokerClient):
    """One signed-in key's calls over the console's shared channel."""

    def __init__(self, channel: grpc.Channel, api_key: str, timeout: float = 10.0):
        super().__init__("", api_key, channel=channel, timeout=timeout, retries=1)

    def close(self) -> None:
        """The channel is the console's, shared by every session: leave it open."""

    def list_approvals(self) -> list:
        return self._every_page(self._policies.ListApprovals, policy_pb.ListApprovalsRequest,
                                "approvals", page_size=1000)

    def approve(self, authorization_id: str, reason: str) -> policy_pb.Approval:
        request = policy_pb.ApproveAuthorizationRequest(
            request_id=self._request_id(), authorization_id=authorization_id, reason=reason)
        return self._call(self._policies.ApproveAuthorization, request).approval

    def deny(self, authorization_id: str, reason: str) -> policy_pb.Approval:
        request = policy_pb.DenyAuthorizationRequest(
            request_id=self._request_id(), authorization_id=authorization_id, reason=reason)
        return self._call(self._policies.DenyAuthorization, request).approval

    def list_alerts(self, page_size: int = 100) -> list:
        """The newest alerts (one page)."""
        return list(self._call(self._policies.ListAlerts,
                               policy_pb.ListAlertsRequest(page_size=page_size)).alerts)

    def watch_alerts(self, after_alert_id: str = ""):
        """The WatchAlerts stream (iterate it; cancel() ends it)."""
        return self._policies.WatchAlerts(
            policy_pb.WatchAlertsRequest(after_alert_id=after_alert_id),
            metadata=self._metadata)

    def receipt_key(self) -> statement_pb.ReceiptKey | None:
        """The owner's registered receipt key; None when none is registered."""
        try:
            return self._call(self._statements.GetReceiptKey,
                              statement_pb.GetReceiptKeyRequest()).receipt_key
        except BrokerClientError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
