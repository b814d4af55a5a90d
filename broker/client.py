"""A small Python client for agents (and owners) that hides the gRPC stubs.

    with BrokerClient("127.0.0.1:50051", api_key) as client:
        offers = client.list_offers(model="tiny-lm")
        auth = client.authorize(250_000, model="tiny-lm", ttl_seconds=300)
        ... hand auth.voucher to a worker ...
        receipt = client.get_receipt(auth.authorization_id)

Or let the broker choose, and fail over between workers with the same voucher:

        quote = client.quote("generate", models=["tiny-lm"], input_tokens=20,
                             output_tokens=64, latency_target_ms=2000)
        auth = client.authorize(250_000, quote_id=quote.quote_id, select_best_offer=True)
        run = client.execute(auth, job)     # tries auth.offers in order (see execute)

Every mutating call carries a fresh request_id; a call that fails with
UNAVAILABLE is retried with the same request_id, so it happens at most once.

Several brokers on one database (docs/scale-out.md): give them all, comma-separated,
`BrokerClient("10.0.0.1:50051,10.0.0.2:50051", api_key)`. The client picks one of them
at random (so that many clients share the brokers; `broker_order="listed"` takes the
first, e.g. the one in the same zone) and keeps to it until it fails (its connection
breaks, or the broker hangs and leaves a keepalive ping unanswered for 2 s), then moves
to the next that answers (common/targets.py); the retry with the same request_id runs
there and gets the one answer. A retry waits as long as the broker's RetryInfo asks
(e.g. while its database restarts).

Owners open the sealed itemised part of their receipts (and a statement's annex)
with `open_sealed`, on their own side, with the private key they registered.

A broker on TLS: pass `ca` (the PEM CA that signed its certificate; or `tls=True`
to trust the system's roots), and for mutual TLS `client_cert` and `client_key`.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from common import mandates, narrowing, sealing, targets
from common import tls as tls_files
from common.status import error_detail, error_info
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .v1 import authorization_service_pb2 as auth_pb
from .v1 import authorization_service_pb2_grpc as auth_grpc
from .v1 import policy_service_pb2 as policy_pb
from .v1 import policy_service_pb2_grpc as policy_grpc
from .v1 import pricing_pb2
from .v1 import pricing_service_pb2 as pricing_pb
from .v1 import pricing_service_pb2_grpc as pricing_grpc
from .v1 import resources_pb2 as res_pb
from .v1 import statement_service_pb2 as statement_pb
from .v1 import statement_service_pb2_grpc as statement_grpc
from .v1 import voucher_key_service_pb2 as keys_pb
from .v1 import voucher_key_service_pb2_grpc as keys_grpc
from .v1 import wallet_service_pb2 as wallet_pb
from .v1 import wallet_service_pb2_grpc as wallet_grpc
from .v1 import worker_registry_service_pb2 as registry_pb
from .v1 import worker_registry_service_pb2_grpc as registry_grpc

MAX_RETRY_DELAY_S = 5.0


class BrokerClientError(Exception):
    """A failed call: the gRPC code plus the ErrorInfo reason and metadata."""

    def __init__(self, error: grpc.RpcError):
        info = error_info(error)
        self.code: grpc.StatusCode = error.code()
        self.reason: str = info.reason if info else ""
        self.metadata: dict[str, str] = dict(info.metadata) if info else {}
        self.details: str = error.details() or ""
        super().__init__(f"{self.code.name} {self.reason}: {self.details}")


@dataclass
class Execution:
    """A job run by `BrokerClient.execute`: the offer that ran it, every event of its
    stream, and the offers tried before it with the error each gave."""

    offer: pricing_pb2.BoundOffer
    events: list = field(default_factory=list)
    failovers: list[tuple[str, BrokerClientError]] = field(default_factory=list)

    @property
    def result(self):
        return self.events[-1].result


class BrokerClient:
    def __init__(self, target: str, api_key: str, *, timeout: float = 10.0, retries: int = 3,
                 channel: grpc.Channel | None = None, ca: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 tls: bool = False, broker_order: str = targets.SPREAD):
        targets.check_order(broker_order)  # a ValueError, before any file is read
        self._channel = channel or tls_files.broker_channel(
            target, tls_files.load_client(ca, client_cert, client_key, tls=tls),
            order=broker_order)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout, self._retries = timeout, retries
        self._wallets = wallet_grpc.WalletServiceStub(self._channel)
        self._auths = auth_grpc.AuthorizationServiceStub(self._channel)
        self._registry = registry_grpc.WorkerRegistryServiceStub(self._channel)
        self._pricing = pricing_grpc.PricingServiceStub(self._channel)
        self._statements = statement_grpc.StatementServiceStub(self._channel)
        self._keys = keys_grpc.VoucherKeyServiceStub(self._channel)
        self._policies = policy_grpc.PolicyServiceStub(self._channel)

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        for attempt in range(self._retries + 1):
            try:
                return method(request, metadata=self._metadata, timeout=self._timeout)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self._retries:
                    raise BrokerClientError(error) from None
                time.sleep(retry_delay_s(error, attempt))
        raise AssertionError("unreachable")

    def _every_page(self, method, request_type, field: str, limit: int | None = None,
                    **fields) -> list:
        """All items of a paginated listing (or the first `limit`), following
        next_page_token."""
        items, token = [], ""
        while True:
            page = self._call(method, request_type(page_token=token, **fields))
            items += getattr(page, field)
            token = page.next_page_token
            if not token or (limit is not None and len(items) >= limit):
                return items[:limit]

    @staticmethod
    def _request_id() -> str:
        return uuid.uuid4().hex

    # Agents ---------------------------------------------------------------------------

    def list_offers(self, *, resource_class: str = "", model: str = "") -> list:
        request = registry_pb.ListOffersRequest(resource_class=resource_class, model=model)
        return list(self._call(self._registry.ListOffers, request).offers)

    def platform_fee_bps(self) -> int:
        """The platform fee now charged, in basis points of each charge (docs/wire.md)."""
        return self._call(self._registry.ListOffers,
                          registry_pb.ListOffersRequest()).platform_fee_bps

    def authorize(self, amount: int, *, resource_class: str = "", model: str = "",
                  worker_id: str = "", max_prices: dict[str, int] | None = None,
                  ttl_seconds: int = 0, request_id: str = "",
                  cache_results: bool = False, quote_id: str = "",
                  select_best_offer: bool = False,
                  labels: dict[str, str] | None = None,
                  holder_public_key: bytes = b"", mandate: str = "") -> auth_pb.Authorization:
        """A hold and its voucher. With a quote id the voucher is charged the quote's
        locked prices; with select_best_offer the broker picks the offer (and the
        voucher is valid at every eligible offer of that model: see execute).
        `labels` (job names, purposes) stay inside the broker, for the owner's books.
        With `holder_public_key` (a fresh Ed25519 key's public half) the voucher can be
        narrowed offline with `narrow_voucher` and that key's private half. `mandate` is
        one the owner signed (`sign_mandate`), where the wallet's policy requires one."""
        scope = res_pb.Scope(resource_class=resource_class, model=model, worker_id=worker_id,
                             max_prices=res_pb.PriceSheet(**(max_prices or {})))
        request = auth_pb.AuthorizeRequest(request_id=request_id or self._request_id(),
                                           amount=amount, scope=scope, ttl_seconds=ttl_seconds,
                                           cache_results=cache_results, quote_id=quote_id,
                                           select_best_offer=select_best_offer,
                                           labels=labels or {},
                                           holder_public_key=holder_public_key,
                                           mandate=mandate)
        return self._call(self._auths.Authorize, request).authorization

    def quote(self, kind: str, *, models: tuple[str, ...] | list[str] = (),
              input_tokens: int = 0, output_tokens: int = 0, gpu_ms: int = 0,
              latency_target_ms: int = 0, max_cost: int = 0, resource_class: str = "",
              lock_seconds: int = 0, request_id: str = "") -> pricing_pb.Quote:
        """Ranked live offers for a job, prices locked for lock_seconds (0: 60)."""
        job = pricing_pb.JobDescription(
            kind=kind, models=list(models), input_tokens=input_tokens,
            output_tokens=output_tokens, gpu_ms=gpu_ms, latency_target_ms=latency_target_ms,
            max_cost=max_cost, resource_class=resource_class)
        request = pricing_pb.QuoteRequest(request_id=request_id or self._request_id(), job=job,
                                          lock_seconds=lock_seconds)
        return self._call(self._pricing.Quote, request).quote

    def execute(self, authorization: auth_pb.Authorization, job, *,
                offers: list | None = None, timeout: float = 60.0,
                worker_tls: tls_files.ClientTls | None = None,
                on_event: Callable[[Any, Any], None] | None = None) -> Execution:
        """Run `job` (a worker.v1.Job) with the authorization's voucher at its offers,
        best first (`authorization.offers`, or `offers`: anything with worker_id and
        endpoint), and return the whole event stream. `worker_tls`: for workers that
        serve agents over TLS (tls.load_client). `on_event(offer, event)` sees each
        event as it arrives (progress).

        Failover: when a worker fails before it accepted the job (unreachable, busy,
        draining, or refusing the voucher), the next offer gets the same voucher, but
        only after the broker confirms the authorization is still held, i.e. no worker
        redeemed the voucher. The broker redeems a voucher at most once, so a worker
        that redeemed it and then failed can never cause a second charge: the client
        stops there and raises. A malformed job (INVALID_ARGUMENT) is not retried."""
        candidates = list(offers if offers is not None else authorization.offers)
        if not candidates:
            raise ValueError("the authorization names no offers; pass offers=")
        request = worker_pb.ExecuteRequest(voucher=authorization.voucher, job=job)
        failovers: list[tuple[str, BrokerClientError]] = []
        for offer in candidates:
            events: list = []
            try:
                with tls_files.channel(offer.endpoint, worker_tls) as channel:
                    for event in worker_grpc.WorkerServiceStub(channel).Execute(
                            request, timeout=timeout):
                        events.append(event)
                        if on_event is not None:
                            on_event(offer, event)
                return Execution(offer, events, failovers)
            except grpc.RpcError as error:
                failure = BrokerClientError(error)
                accepted = any(e.WhichOneof("kind") == "accepted" for e in events)
                if accepted or error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise failure from None
                failovers.append((offer.worker_id, failure))
                held = self.get_authorization(authorization.authorization_id).state
                if held != auth_pb.AUTHORIZATION_STATE_HELD:
                    raise failure from None
        raise failovers[-1][1]

    def get_quote(self, quote_id: str) -> pricing_pb.Quote:
        return self._call(self._pricing.GetQuote,
                          pricing_pb.GetQuoteRequest(quote_id=quote_id)).quote

    def list_grants(self, wallet_id: str = "") -> pricing_pb.ListGrantsResponse:
        """The first page of a wallet's grants (newest first) and its balance breakdown."""
        return self._call(self._pricing.ListGrants,
                          pricing_pb.ListGrantsRequest(wallet_id=wallet_id, page_size=1000))

    def create_lease(self, worker_id: str, duration_seconds: int,
                     quote_id: str = "") -> pricing_pb.Lease:
        request = pricing_pb.CreateLeaseRequest(request_id=self._request_id(),
                                                worker_id=worker_id,
                                                duration_seconds=duration_seconds,
                                                quote_id=quote_id)
        return self._call(self._pricing.CreateLease, request).lease

    def authorize_lease_job(self, lease_id: str, model: str = "") -> auth_pb.Authorization:
        request = pricing_pb.AuthorizeLeaseJobRequest(request_id=self._request_id(),
                                                      lease_id=lease_id, model=model)
        return self._call(self._pricing.AuthorizeLeaseJob, request).authorization

    def get_lease(self, lease_id: str) -> pricing_pb.Lease:
        return self._call(self._pricing.GetLease,
                          pricing_pb.GetLeaseRequest(lease_id=lease_id)).lease

    def end_lease(self, lease_id: str) -> pricing_pb.Lease:
        request = pricing_pb.EndLeaseRequest(request_id=self._request_id(), lease_id=lease_id)
        return self._call(self._pricing.EndLease, request).lease

    def cancel(self, authorization_id: str) -> auth_pb.Authorization:
        request = auth_pb.CancelAuthorizationRequest(request_id=self._request_id(),
                                                     authorization_id=authorization_id)
        return self._call(self._auths.CancelAuthorization, request).authorization

    def get_authorization(self, authorization_id: str) -> auth_pb.Authorization:
        request = auth_pb.GetAuthorizationRequest(authorization_id=authorization_id)
        return self._call(self._auths.GetAuthorization, request).authorization

    def get_receipt(self, authorization_id: str) -> res_pb.Receipt:
        request = auth_pb.GetReceiptRequest(authorization_id=authorization_id)
        return self._call(self._auths.GetReceipt, request).receipt

    def balance(self, wallet_id: str = "") -> res_pb.Balance:
        request = wallet_pb.GetBalanceRequest(wallet_id=wallet_id)
        return self._call(self._wallets.GetBalance, request).balance

    def spend_status(self, wallet_id: str = "") -> policy_pb.SpendStatus:
        """Spent today, this week, month and all time, refills, and the blast radius."""
        request = policy_pb.GetSpendStatusRequest(wallet_id=wallet_id)
        return self._call(self._policies.GetSpendStatus, request).status

    def spend_policy(self, wallet_id: str = "") -> policy_pb.GetSpendPolicyResponse:
        """The policy in force for the wallet, and where it comes from."""
        request = policy_pb.GetSpendPolicyRequest(wallet_id=wallet_id)
        return self._call(self._policies.GetSpendPolicy, request)

    def wait_for_approval(self, authorization_id: str,
                          timeout: float) -> policy_pb.WatchAuthorizationResponse:
        """The authorization once an owner decided it (the stream ends), or its last
        state when `timeout` seconds run out first."""
        request = policy_pb.WatchAuthorizationRequest(authorization_id=authorization_id)
        last = None
        try:
            for state in self._policies.WatchAuthorization(request, metadata=self._metadata,
                                                           timeout=timeout):
                last = state
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or last is None:
                raise BrokerClientError(error) from None
        return last

    def list_transfers(self, wallet_id: str = "", page_size: int = 100) -> list:
        """Every transfer of the wallet, newest first (follows pagination)."""
        return self._every_page(self._wallets.ListTransfers, wallet_pb.ListTransfersRequest,
                                "transfers", wallet_id=wallet_id, page_size=page_size)

    # Owners ---------------------------------------------------------------------------

    def create_wallet(self, cap: int, refill_target: int = 0,
                      display_name: str = "") -> wallet_pb.Wallet:
        request = wallet_pb.CreateWalletRequest(request_id=self._request_id(), cap=cap,
                                                refill_target=refill_target,
                                                display_name=display_name)
        return self._call(self._wallets.CreateWallet, request).wallet

    def list_wallets(self) -> list:
        """Every wallet of the owner (follows pagination)."""
        return self._every_page(self._wallets.ListWallets, wallet_pb.ListWalletsRequest,
                                "wallets", page_size=1000)

    def fund_wallet(self, wallet_id: str, amount: int) -> wallet_pb.FundWalletResponse:
        request = wallet_pb.FundWalletRequest(request_id=self._request_id(),
                                              wallet_id=wallet_id, amount=amount)
        return self._call(self._wallets.FundWallet, request)

    def get_wallet(self, wallet_id: str = "") -> wallet_pb.Wallet:
        return self._call(self._wallets.GetWallet,
                          wallet_pb.GetWalletRequest(wallet_id=wallet_id)).wallet

    def freeze(self, wallet_id: str, frozen: bool = True) -> wallet_pb.Wallet:
        if frozen:
            request = wallet_pb.FreezeWalletRequest(request_id=self._request_id(),
                                                    wallet_id=wallet_id)
            return self._call(self._wallets.FreezeWallet, request).wallet
        request = wallet_pb.UnfreezeWalletRequest(request_id=self._request_id(),
                                                  wallet_id=wallet_id)
        return self._call(self._wallets.UnfreezeWallet, request).wallet

    def create_plan(self, credits_per_period: int, period_seconds: int, *,
                    rollover_periods: int = 0, priority: int = 0,
                    display_name: str = "") -> pricing_pb.Plan:
        request = pricing_pb.CreatePlanRequest(
            request_id=self._request_id(), display_name=display_name,
            credits_per_period=credits_per_period, period_seconds=period_seconds,
            rollover_periods=rollover_periods, priority=priority)
        return self._call(self._pricing.CreatePlan, request).plan

    def subscribe(self, plan_id: str, wallet_id: str) -> pricing_pb.Subscription:
        request = pricing_pb.SubscribeRequest(request_id=self._request_id(), plan_id=plan_id,
                                              wallet_id=wallet_id)
        return self._call(self._pricing.Subscribe, request).subscription

    def cancel_subscription(self, subscription_id: str) -> pricing_pb.Subscription:
        request = pricing_pb.CancelSubscriptionRequest(request_id=self._request_id(),
                                                       subscription_id=subscription_id)
        return self._call(self._pricing.CancelSubscription, request).subscription

    def register_receipt_key(self, public_key: bytes) -> statement_pb.ReceiptKey:
        """Seal the itemised part of this owner's future receipts to `public_key`."""
        request = statement_pb.RegisterReceiptKeyRequest(request_id=self._request_id(),
                                                         public_key=public_key)
        return self._call(self._statements.RegisterReceiptKey, request).receipt_key

    def list_receipts(self, wallet_id: str = "", page_size: int = 100,
                      limit: int | None = None) -> list:
        """Every receipt of the wallet (or the newest `limit`), newest first."""
        return self._every_page(self._statements.ListReceipts,
                                statement_pb.ListReceiptsRequest, "receipts", limit,
                                wallet_id=wallet_id, page_size=page_size)

    def latest_receipts(self, wallet_id: str = "", count: int = 10) -> list:
        """The wallet's `count` newest receipts (one page, 1 to 1000)."""
        request = statement_pb.ListReceiptsRequest(wallet_id=wallet_id, page_size=count)
        return list(self._call(self._statements.ListReceipts, request).receipts)

    def get_statement(self, start_ms: int, end_ms: int, *, granularity: int = 0,
                      include_annex: bool = False, owner_id: str = "") -> statement_pb.Statement:
        request = statement_pb.GetStatementRequest(
            owner_id=owner_id, period_start=_timestamp(start_ms),
            period_end=_timestamp(end_ms), granularity=granularity,
            include_annex=include_annex)
        return self._call(self._statements.GetStatement, request).statement

    def get_payout_statement(self, start_ms: int, end_ms: int, *, granularity: int = 0,
                             provider_id: str = "") -> statement_pb.PayoutStatement:
        request = statement_pb.GetPayoutStatementRequest(
            provider_id=provider_id, period_start=_timestamp(start_ms),
            period_end=_timestamp(end_ms), granularity=granularity)
        return self._call(self._statements.GetPayoutStatement, request).statement

    def voucher_keys(self) -> dict[str, bytes]:
        """The broker's keys that verify vouchers, by key id."""
        reply = self._call(self._keys.ListVoucherKeys, keys_pb.ListVoucherKeysRequest())
        return {k.key_id: k.public_key for k in reply.keys}

    def receipt_signing_keys(self) -> dict[str, bytes]:
        """The broker's keys that verify receipts and statements, by key id."""
        reply = self._call(self._statements.ListReceiptSigningKeys,
                           statement_pb.ListReceiptSigningKeysRequest())
        return {k.key_id: k.public_key for k in reply.keys}

    # Admins ---------------------------------------------------------------------------

    def rotate_voucher_key(self) -> keys_pb.RotateVoucherKeyResponse:
        return self._call(self._keys.RotateVoucherKey,
                          keys_pb.RotateVoucherKeyRequest(request_id=self._request_id()))

    def rotate_receipt_signing_key(self) -> statement_pb.RotateReceiptSigningKeyResponse:
        return self._call(self._statements.RotateReceiptSigningKey,
                          statement_pb.RotateReceiptSigningKeyRequest(
                              request_id=self._request_id()))


def retry_delay_s(error: grpc.RpcError, attempt: int) -> float:
    """How long to wait before retrying an UNAVAILABLE call: the broker's RetryInfo when
    it sent one (e.g. STORE_UNAVAILABLE while its database is away), at most
    MAX_RETRY_DELAY_S; else 0.1 s doubling per attempt (a broker that went away: the
    channel is already moving to the next one)."""
    info = error_detail(error, error_details_pb2.RetryInfo)
    if info is not None and info.retry_delay.ToMilliseconds() > 0:
        return min(MAX_RETRY_DELAY_S, info.retry_delay.ToMilliseconds() / 1000)
    return 0.1 * 2**attempt


def narrow_voucher(voucher: str, holder_key: SigningKey, *, amount: int, expire_ms: int,
                   scope: dict[str, Any], next_key: SigningKey | None = None) -> str:
    """A narrower voucher for a sub-agent, derived offline (no call to the broker):
    `holder_key` is the key the voucher names, `next_key` the one that may narrow the
    result again (give its private half to the sub-agent; None: it cannot be narrowed).
    Scope fields left out are kept as the voucher's. Raises BrokerError
    (VOUCHER_WIDENED, VOUCHER_CHAIN_BROKEN) for what a worker would refuse."""
    return narrowing.derive(voucher, holder_key, amount=amount, expire_ms=expire_ms,
                            scope=narrowing.inherit(voucher, scope),
                            next_public_key=narrowing.public_key_text(next_key)
                            if next_key else "")


def sign_mandate(owner_key: SigningKey, *, wallet_id: str, per_job: int, total: int,
                 expire_ms: int, agent_key_id: str = "", models: tuple[str, ...] = ()) -> str:
    """A mandate signed offline with the owner's mandate key (registered with
    DelegationService.RegisterMandateKey): `wallet_id` (and its sub-budgets) or only
    `agent_key_id` may spend at most `per_job` per authorization and `total` in all,
    on `models` (empty: any), until `expire_ms`. Give it to the agent for Authorize."""
    return mandates.sign(owner_key, wallet_id=wallet_id, per_job=per_job, total=total,
                         expire_ms=expire_ms, issued_ms=int(time.time() * 1000),
                         agent_key_id=agent_key_id, models=models)


def _timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _with_labels_opened(document: dict, private_key: PrivateKey) -> dict:
    """Labels sealed at Authorize (the owner had a receipt key then) ride in the itemised
    part still sealed: open them too, with the same key. Left sealed when they were
    sealed to a key the owner has since replaced."""
    if not document.get("sealed_labels"):
        return document
    try:
        opened = sealing.open_sealed(private_key, base64.b64decode(document["sealed_labels"]))
    except sealing.SealError:
        return document
    rest = {k: v for k, v in document.items() if k != "sealed_labels"}
    return {**rest, "labels": opened["labels"]}


def open_sealed(sealed: Any, private_key: PrivateKey | str,
                signing_keys: dict[str, bytes] | None = None) -> dict:
    """Open, on the owner's side, a receipt's sealed itemised part or a statement's
    sealed annex: `sealed` is a Receipt, a Statement or the raw sealed bytes;
    `private_key` the owner's private receipt key (a PrivateKey, or the hex text
    `broker receipts keygen` wrote). With `signing_keys` (receipt_signing_keys()), the
    broker's signature inside must verify. Raises sealing.SealError with a clear
    message when the key is not the one it was sealed to."""
    if isinstance(private_key, str):
        private_key = sealing.load_private_key(private_key)
    verify = ({kid: VerifyKey(raw) for kid, raw in signing_keys.items()}
              if signing_keys is not None else None)
    if isinstance(sealed, res_pb.Receipt):
        document = sealing.open_document(private_key, sealed.sealed_itemised, verify)
        if document.get("receipt_id") != sealed.receipt_id:
            raise sealing.SealError("the sealed part belongs to another receipt")
        return _with_labels_opened(document, private_key)
    if isinstance(sealed, statement_pb.Statement):
        return sealing.open_document(private_key, sealed.annex, verify)
    return sealing.open_document(private_key, bytes(sealed), verify)
