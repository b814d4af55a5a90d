"""A small Python client for agents (and owners) that hides the gRPC stubs.

    with BrokerClient("127.0.0.1:50051", api_key) as client:
        offers = client.list_offers(model="tiny-lm")
        auth = client.authorize(250_000, model="tiny-lm", ttl_seconds=300)
        ... hand auth.voucher to a worker ...
        receipt = client.get_receipt(auth.authorization_id)

Every mutating call carries a fresh request_id; a call that fails with
UNAVAILABLE is retried with the same request_id, so it happens at most once.

A broker on TLS: pass `ca` (the PEM CA that signed its certificate; or `tls=True`
to trust the system's roots), and for mutual TLS `client_cert` and `client_key`.
"""

from __future__ import annotations

import time
import uuid

import grpc

from . import tls as tls_files
from .api.errors import error_info
from .v1 import authorization_service_pb2 as auth_pb
from .v1 import authorization_service_pb2_grpc as auth_grpc
from .v1 import resources_pb2 as res_pb
from .v1 import wallet_service_pb2 as wallet_pb
from .v1 import wallet_service_pb2_grpc as wallet_grpc
from .v1 import worker_registry_service_pb2 as registry_pb
from .v1 import worker_registry_service_pb2_grpc as registry_grpc


class BrokerClientError(Exception):
    """A failed call: the gRPC code plus the ErrorInfo reason and metadata."""

    def __init__(self, error: grpc.RpcError):
        info = error_info(error)
        self.code: grpc.StatusCode = error.code()
        self.reason: str = info.reason if info else ""
        self.metadata: dict[str, str] = dict(info.metadata) if info else {}
        super().__init__(f"{self.code.name} {self.reason}: {error.details()}")


class BrokerClient:
    def __init__(self, target: str, api_key: str, *, timeout: float = 10.0, retries: int = 3,
                 channel: grpc.Channel | None = None, ca: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 tls: bool = False):
        self._channel = channel or tls_files.channel(
            target, tls_files.load_client(ca, client_cert, client_key, tls=tls))
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self._timeout, self._retries = timeout, retries
        self._wallets = wallet_grpc.WalletServiceStub(self._channel)
        self._auths = auth_grpc.AuthorizationServiceStub(self._channel)
        self._registry = registry_grpc.WorkerRegistryServiceStub(self._channel)

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
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _request_id() -> str:
        return uuid.uuid4().hex

    # Agents ---------------------------------------------------------------------------

    def list_offers(self, *, resource_class: str = "", model: str = "") -> list:
        request = registry_pb.ListOffersRequest(resource_class=resource_class, model=model)
        return list(self._call(self._registry.ListOffers, request).offers)

    def authorize(self, amount: int, *, resource_class: str = "", model: str = "",
                  worker_id: str = "", max_prices: dict[str, int] | None = None,
                  ttl_seconds: int = 0, request_id: str = "",
                  cache_results: bool = False) -> auth_pb.Authorization:
        scope = res_pb.Scope(resource_class=resource_class, model=model, worker_id=worker_id,
                             max_prices=res_pb.PriceSheet(**(max_prices or {})))
        request = auth_pb.AuthorizeRequest(request_id=request_id or self._request_id(),
                                           amount=amount, scope=scope, ttl_seconds=ttl_seconds,
                                           cache_results=cache_results)
        return self._call(self._auths.Authorize, request).authorization

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

    def list_transfers(self, wallet_id: str = "", page_size: int = 100) -> list:
        """Every transfer of the wallet, newest first (follows pagination)."""
        transfers, token = [], ""
        while True:
            page = self._call(self._wallets.ListTransfers, wallet_pb.ListTransfersRequest(
                wallet_id=wallet_id, page_size=page_size, page_token=token))
            transfers += page.transfers
            token = page.next_page_token
            if not token:
                return transfers

    # Owners ---------------------------------------------------------------------------

    def create_wallet(self, cap: int, refill_target: int = 0,
                      display_name: str = "") -> wallet_pb.Wallet:
        request = wallet_pb.CreateWalletRequest(request_id=self._request_id(), cap=cap,
                                                refill_target=refill_target,
                                                display_name=display_name)
        return self._call(self._wallets.CreateWallet, request).wallet

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
