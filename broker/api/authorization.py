"""AuthorizationService: holds and vouchers for agents."""

from __future__ import annotations

from common import convert
from common.errors import BrokerError

from ..core import authorizations, labels, policy, pricing
from ..v1 import authorization_service_pb2 as pb
from ..v1 import authorization_service_pb2_grpc as pb_grpc
from .base import Services, unary

READERS = ("agent", "owner", "auditor", "admin")


class AuthorizationServicer(pb_grpc.AuthorizationServiceServicer):
    def __init__(self, services: Services):
        self.s = services

    @unary
    async def Authorize(self, request, context):
        p = await self.s.authenticate(context, "agent")
        self.s.refuse_when_draining()
        key_id = self.s.keyring.active_id
        scope = convert.scope_from_proto(request.scope)
        cache_secret = self.s.cache_secret if request.cache_results else b""
        job_labels = dict(request.labels)
        # Pricing (issue 6): a quote id binds the voucher to the quote's locked prices.
        live = set(await self.s.live_ids()) if request.quote_id else set()
        keyring = self.s.keyring
        try:
            result, token = await self.s.mutate(p, "Authorize", request, lambda tx, now: (
                pricing.with_quote(
                    tx, p, request.quote_id, request.select_best_offer, scope, live, now,
                    lambda scope: authorizations.authorize(
                        tx, p, request.amount, scope, request.ttl_seconds, now, self.s.config,
                        key_id, cache_secret=cache_secret, job_labels=job_labels,
                        holder_key=request.holder_public_key, mandate=request.mandate))),
                then=lambda result: _voucher_ahead(result, keyring))
        except BrokerError as error:
            reason = error.reason
            if reason in policy.COUNTED_DENIALS:  # runs of denials raise alerts
                await self.s.store.submit(lambda tx: policy.record_denial(
                    tx, p, reason, self.s.clock()))
                self.s.changes.notify()
            raise
        self.s.changes.notify()
        if result["state"] == authorizations.PENDING_APPROVAL:
            # A retry of a request that waited for approval gets its state now (and the
            # voucher, once approved): agents may poll this way too.
            result = await self.s.read(lambda tx: tx.get("authorizations",
                                                         result["authorization_id"]))
            token = None
        if token is None:
            token = ""
            if authorizations.has_voucher(result):
                signer = self.s.keyring.signer_for(result["voucher_key_id"])
                token = await self.s.crypto.run(lambda: authorizations.voucher_token(
                    result, signer))
        return pb.AuthorizeResponse(authorization=convert.authorization(
            result, voucher=token, labels=job_labels))

    @unary
    async def GetAuthorization(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        found, job_labels = await self.s.read(lambda tx: _with_labels(
            tx, authorizations.get_authorization(tx, p, request.authorization_id)))
        return pb.GetAuthorizationResponse(authorization=convert.authorization(
            found, labels=job_labels))

    @unary
    async def ListAuthorizations(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        page, found = await self.s.read(lambda tx: _page_with_labels(
            tx, authorizations.list_authorizations(tx, p, request.wallet_id,
                                                   request.page_size, request.page_token)))
        return pb.ListAuthorizationsResponse(
            authorizations=[convert.authorization(a, labels=job_labels)
                            for a, job_labels in found],
            next_page_token=page["next_page_token"])

    @unary
    async def CancelAuthorization(self, request, context):
        p = await self.s.authenticate(context, "agent", "owner")
        result = await self.s.mutate(p, "CancelAuthorization", request, lambda tx, now: (
            authorizations.cancel(tx, p, request.authorization_id, now)))
        _, job_labels = await self.s.read(lambda tx: _with_labels(tx, result))
        return pb.CancelAuthorizationResponse(authorization=convert.authorization(
            result, labels=job_labels))

    @unary
    async def GetReceipt(self, request, context):
        p = await self.s.authenticate(context, *READERS)
        found = await self.s.read(lambda tx: authorizations.get_receipt(
            tx, p, request.authorization_id))
        return pb.GetReceiptResponse(receipt=convert.receipt(found))


def _voucher_ahead(result, keyring) -> str | None:
    """The voucher of a new (or retried) authorization, signed in the store's writer
    right after the op that made it. Why there: the writer has the record in hand,
    libsodium signs without the GIL, and the call then needs one hand-over between
    threads instead of two (writer, then crypto thread). None when it is left to the
    event loop's side: a pending approval (read again there), or a signer that fails
    (it raises there, as it did before)."""
    if result["state"] == authorizations.PENDING_APPROVAL:
        return None
    if not authorizations.has_voucher(result):
        return ""
    try:
        return authorizations.voucher_token(result, keyring.signer_for(result["voucher_key_id"]))
    except Exception:  # noqa: BLE001 - raised again, where it always was
        return None


def _with_labels(tx, auth):
    return auth, labels.of(tx, auth["authorization_id"])


def _page_with_labels(tx, page):
    return page, [_with_labels(tx, a) for a in page["authorizations"]]
