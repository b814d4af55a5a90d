import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import grpc
import pytest

from broker.client import BrokerClient
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import admin_service_pb2_grpc as admin_grpc
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import authorization_service_pb2_grpc as auth_grpc
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import statement_service_pb2 as statement_pb
from broker.v1 import statement_service_pb2_grpc as statement_grpc
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import voucher_key_service_pb2_grpc as keys_grpc
from broker.v1 import wallet_service_pb2 as wallet_pb
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc
from broker.v1 import worker_registry_service_pb2 as registry_pb
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc
from common.money import PRICE_FIELDS, USAGE_FIELDS
from common.status import DOMAIN, error_info
from worker.broker_link import MeteringSession, SessionClosed
from worker.v1 import worker_service_pb2 as worker_pb
from worker.v1 import worker_service_pb2_grpc as worker_grpc

from .broker_process import BrokerProcess
from .worker_process import WorkerProcess

# Demo state (broker/demo.py): what every test starts from.
TREASURY_START = 100_000_000 - 5_000_000
WALLET_START = 5_000_000
WALLET_CAP = 10_000_000
REFILL_TARGET = 5_000_000


@pytest.fixture
def broker(tmp_path):
    process = BrokerProcess(tmp_path / "data").start()
    yield process
    process.stop()


@pytest.fixture
def channel(broker):
    with grpc.insecure_channel(broker.target) as ch:
        yield ch


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def rid() -> str:
    """A fresh request_id."""
    return uuid.uuid4().hex


# -- sync stubs bound to one API key -------------------------------------------------


class _Bound:
    """A stub whose methods send the key's metadata and a timeout."""

    def __init__(self, stub, metadata: tuple):
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def call(request, **kwargs):
            kwargs.setdefault("timeout", 10)
            return method(request, metadata=self._metadata, **kwargs)

        return call


class Client:
    """All broker.v1 unary services, called with one API key (or none)."""

    def __init__(self, channel: grpc.Channel, key: str | None):
        metadata = bearer(key) if key else ()
        self.key = key
        self.admin = _Bound(admin_grpc.AdminServiceStub(channel), metadata)
        self.wallets = _Bound(wallet_grpc.WalletServiceStub(channel), metadata)
        self.auths = _Bound(auth_grpc.AuthorizationServiceStub(channel), metadata)
        self.registry = _Bound(registry_grpc.WorkerRegistryServiceStub(channel), metadata)
        self.keys = _Bound(keys_grpc.VoucherKeyServiceStub(channel), metadata)
        self.statements = _Bound(statement_grpc.StatementServiceStub(channel), metadata)

    # Shortcuts used everywhere.
    def balance(self, wallet_id: str = "") -> res_pb.Balance:
        return self.wallets.GetBalance(wallet_pb.GetBalanceRequest(wallet_id=wallet_id)).balance

    def authorize(self, amount: int, *, ttl_seconds: int = 0, request_id: str | None = None,
                  scope: res_pb.Scope | None = None) -> auth_pb.Authorization:
        return self.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid() if request_id is None else request_id, amount=amount,
            ttl_seconds=ttl_seconds, scope=scope)).authorization

    def get_authorization(self, authorization_id: str) -> auth_pb.Authorization:
        return self.auths.GetAuthorization(auth_pb.GetAuthorizationRequest(
            authorization_id=authorization_id)).authorization

    def receipt(self, authorization_id: str) -> res_pb.Receipt:
        return self.auths.GetReceipt(auth_pb.GetReceiptRequest(
            authorization_id=authorization_id)).receipt

    def fund(self, wallet_id: str, amount: int, request_id: str | None = None):
        return self.wallets.FundWallet(wallet_pb.FundWalletRequest(
            request_id=rid() if request_id is None else request_id, wallet_id=wallet_id,
            amount=amount))

    def summary(self) -> admin_pb.GetLedgerSummaryResponse:
        return self.admin.GetLedgerSummary(admin_pb.GetLedgerSummaryRequest())

    def transfers(self, wallet_id: str = "", page_size: int = 1000) -> list:
        out, token = [], ""
        while True:
            page = self.wallets.ListTransfers(wallet_pb.ListTransfersRequest(
                wallet_id=wallet_id, page_size=page_size, page_token=token))
            out += page.transfers
            token = page.next_page_token
            if not token:
                return out


@dataclass
class Tenant:
    """A second owner with a funded treasury, a wallet and owner/agent keys."""

    owner_id: str
    wallet_id: str
    owner: Client
    agent: Client


class Harness:
    """The live broker, the demo credentials and a client per role."""

    def __init__(self, broker: BrokerProcess, channel: grpc.Channel):
        self.broker, self.channel = broker, channel
        self.creds = broker.credentials
        self.owner_id = self.creds["owner_id"]
        self.wallet_id = self.creds["wallet_id"]
        self.provider_id = self.creds["provider_id"]
        self.anon = Client(channel, None)
        self.admin = Client(channel, self.creds["admin_api_key"])
        self.owner = Client(channel, self.creds["owner_api_key"])
        self.agent = Client(channel, self.creds["agent_api_key"])
        self.worker = Client(channel, self.creds["worker_api_key"])

    @property
    def target(self) -> str:
        return self.broker.target

    def summary(self) -> admin_pb.GetLedgerSummaryResponse:
        return self.admin.summary()

    def wallet(self) -> res_pb.Balance:
        return self.owner.balance(self.wallet_id)

    def treasury(self) -> res_pb.Balance:
        return self.owner.balance("")

    def snapshot(self) -> tuple:
        """Everything a rejected request must leave as it was."""
        return (self.summary(), self.wallet(), self.treasury())

    def register_worker(self, *, gpu_second_price: int = 1000, call_price: int = 0,
                        input_tokens_1k_price: int = 0, output_tokens_1k_price: int = 0,
                        resource_class: str = "gpu.h100", models=("tiny-lm",),
                        key: str | None = None) -> str:
        client = Client(self.channel, key) if key else self.worker
        reply = client.registry.RegisterWorker(registry_pb.RegisterWorkerRequest(
            request_id=rid(), endpoint="127.0.0.1:7001",
            capabilities=registry_pb.Capabilities(resource_class=resource_class,
                                                  models=list(models), meter="cpu_time"),
            prices=res_pb.PriceSheet(gpu_second_price=gpu_second_price, call_price=call_price,
                                     input_tokens_1k_price=input_tokens_1k_price,
                                     output_tokens_1k_price=output_tokens_1k_price)))
        return reply.worker_id

    def new_tenant(self, *, treasury: int = 20_000_000, wallet_funding: int = 1_000_000) -> Tenant:
        owner = self.admin.admin.CreateOwner(admin_pb.CreateOwnerRequest(
            request_id=rid(), display_name="Other tenant"))
        self.admin.admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
            request_id=rid(), owner_id=owner.owner_id, amount=treasury))
        owner_key = self.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
            request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=owner.owner_id)).api_key
        owner_client = Client(self.channel, owner_key)
        wallet = owner_client.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
            request_id=rid(), display_name="other wallet", cap=5_000_000,
            refill_target=1_000_000)).wallet
        owner_client.fund(wallet.wallet_id, wallet_funding)
        agent_key = self.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
            request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=owner.owner_id,
            wallet_id=wallet.wallet_id)).api_key
        return Tenant(owner.owner_id, wallet.wallet_id, owner_client, Client(self.channel,
                                                                             agent_key))

    def public_keys(self) -> dict[str, bytes]:
        reply = self.anon.keys.ListVoucherKeys(keys_pb.ListVoucherKeysRequest())
        return {k.key_id: k.public_key for k in reply.keys}

    def receipt_keys(self) -> dict[str, bytes]:
        """The keys that verify receipts and statements."""
        reply = self.anon.statements.ListReceiptSigningKeys(
            statement_pb.ListReceiptSigningKeysRequest())
        return {k.key_id: k.public_key for k in reply.keys}

    def wait_for_state(self, authorization_id: str, state: int,
                       timeout: float = 10.0) -> auth_pb.Authorization:
        deadline = time.monotonic() + timeout
        while True:
            auth = self.owner.get_authorization(authorization_id)
            if auth.state == state or time.monotonic() > deadline:
                return auth
            time.sleep(0.05)


@pytest.fixture
def h(broker, channel) -> Harness:
    return Harness(broker, channel)


# -- errors ---------------------------------------------------------------------------


def check_error(error: grpc.RpcError, code: grpc.StatusCode, reason: str | None) -> None:
    """The status code and the ErrorInfo reason/domain of a failed call (AIP-193)."""
    assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
        f"{error.code()}: {error.details()}"
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    if reason is None:
        return
    info = error_info(error)
    assert info is not None, f"no ErrorInfo in {error.code()}: {error.details()}"
    assert info.domain == DOMAIN
    assert info.reason == reason, f"expected {reason}, got {info.reason}: {error.details()}"


@contextlib.contextmanager
def rpc_error(code: grpc.StatusCode, reason: str | None):
    """`with rpc_error(NOT_FOUND, "WALLET_NOT_FOUND"): ...` (reason None: code only)."""
    with pytest.raises(grpc.RpcError) as caught:
        yield caught
    check_error(caught.value, code, reason)


# -- metering (grpc.aio) --------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def aio_channel(target: str):
    async with grpc.aio.insecure_channel(target) as ch:
        yield ch


async def open_session(ch, key: str, voucher: str, worker_id: str,
                       **kwargs) -> MeteringSession:
    return await MeteringSession.open(ch, key, voucher, worker_id, **kwargs)


def stream_error(error: BaseException) -> grpc.RpcError:
    """The broker's status behind a failed metering call."""
    if isinstance(error, SessionClosed):
        assert error.error is not None, "the stream closed without a status"
        return error.error
    assert isinstance(error, grpc.RpcError), repr(error)
    return error


@contextlib.asynccontextmanager
async def stream_rpc_error(code: grpc.StatusCode, reason: str | None):
    with pytest.raises((grpc.RpcError, SessionClosed)) as caught:
        yield caught
    check_error(stream_error(caught.value), code, reason)


# -- worker daemon (worker.v1.WorkerService) ---------------------------------------------

WORKER_DOMAIN = "worker.v1"


@dataclass
class JobRun:
    """Every event of one Execute stream, in order, and how long the call took."""

    events: list
    elapsed: float

    def kinds(self) -> list[str]:
        return [e.WhichOneof("kind") for e in self.events]

    @property
    def accepted(self) -> worker_pb.JobAccepted:
        assert self.kinds()[0] == "accepted", self.kinds()
        return self.events[0].accepted

    @property
    def outputs(self) -> list:
        return [e.output for e in self.events if e.WhichOneof("kind") == "output"]

    @property
    def usages(self) -> list:
        return [e.usage for e in self.events if e.WhichOneof("kind") == "usage"]

    @property
    def result(self) -> worker_pb.JobResult:
        assert self.kinds()[-1] == "result", self.kinds()
        return self.events[-1].result


def generate_job(prompt: str = "Hello, broker!", max_new_tokens: int = 16, *,
                 model: str = "tiny-lm", seed: int = 0,
                 temperature_milli: int = 0) -> worker_pb.Job:
    return worker_pb.Job(generate=worker_pb.GenerateJob(
        model=model, prompt=prompt, max_new_tokens=max_new_tokens, seed=seed,
        temperature_milli=temperature_milli))


def burn_job(duration_ms: int) -> worker_pb.Job:
    return worker_pb.Job(burn=worker_pb.BurnJob(duration_ms=duration_ms))


def handler_job(handler: str, data: bytes = b"") -> worker_pb.Job:
    return worker_pb.Job(handler=worker_pb.HandlerJob(handler=handler, input=data))


def usage_dict(usage: res_pb.Usage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in USAGE_FIELDS}


def prices_dict(prices: res_pb.PriceSheet) -> dict[str, int]:
    return {name: getattr(prices, name) for name in PRICE_FIELDS}


def check_worker_error(error: grpc.RpcError, code: grpc.StatusCode, reason: str,
                       domain: str = WORKER_DOMAIN) -> None:
    """A refused Execute: canonical code plus ErrorInfo (the worker's own domain, or the
    broker's for a status passed through unchanged)."""
    assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
        f"{error.code()}: {error.details()}"
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    info = error_info(error)
    assert info is not None, f"no ErrorInfo in {error.code()}: {error.details()}"
    assert (info.domain, info.reason) == (domain, reason), \
        f"expected {domain}/{reason}, got {info.domain}/{info.reason}: {error.details()}"


class WorkerWorld:
    """A live broker with its demo data, one worker daemon registered with it, the
    broker-side Harness, and an agent-side BrokerClient. Remembers every voucher it
    issued, for the log privacy checks."""

    def __init__(self, broker: BrokerProcess, worker: WorkerProcess):
        self.broker, self.worker = broker, worker
        self._connect()
        self.creds = self.h.creds
        self.vouchers: list[str] = []
        self.api_keys: list[str] = [v for k, v in self.creds.items() if k.endswith("api_key")]

    def _connect(self) -> None:
        self.channel = grpc.insecure_channel(self.broker.target)
        self.h = Harness(self.broker, self.channel)
        self.agent = BrokerClient(self.broker.target, self.h.creds["agent_api_key"])

    def restart_broker(self) -> None:
        """Start the (killed or stopped) broker again on the same port and data dir, and
        reconnect this side (fresh channels: no waiting out a reconnect backoff)."""
        self.broker.stop()
        self.broker.start()
        self.close()
        self._connect()

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id

    def authorize(self, amount: int, *, client: BrokerClient | None = None,
                  ttl_seconds: int = 60, **scope) -> auth_pb.Authorization:
        """A voucher from the demo agent (or `client`), pinned to this worker unless
        `worker_id` is given."""
        scope.setdefault("worker_id", self.worker_id)
        auth = (client or self.agent).authorize(amount, ttl_seconds=ttl_seconds, **scope)
        self.vouchers.append(auth.voucher)
        return auth

    def execute(self, voucher: str, job: worker_pb.Job, *, target: str | None = None,
                timeout: float = 60) -> JobRun:
        """Run one job to the end; a refused call raises grpc.RpcError."""
        start = time.monotonic()
        with grpc.insecure_channel(target or self.worker.target) as ch:
            events = list(worker_grpc.WorkerServiceStub(ch).Execute(
                worker_pb.ExecuteRequest(voucher=voucher, job=job), timeout=timeout))
        return JobRun(events, time.monotonic() - start)

    def state(self, authorization_id: str) -> auth_pb.Authorization:
        return self.h.owner.get_authorization(authorization_id)

    def wait_settled(self, authorization_id: str, timeout: float = 10.0) -> res_pb.Receipt:
        auth = self.h.wait_for_state(authorization_id, auth_pb.AUTHORIZATION_STATE_SETTLED,
                                     timeout)
        assert auth.state == auth_pb.AUTHORIZATION_STATE_SETTLED, auth
        return self.agent.get_receipt(authorization_id)

    def violations(self) -> list[str]:
        return list(self.h.summary().violations)

    def check_log_privacy(self, *workers: WorkerProcess) -> None:
        """No worker log holds a voucher (nor a part of one) or an API key."""
        secrets_ = [*self.api_keys]
        for voucher in self.vouchers:
            secrets_ += [voucher, *(part for part in voucher.split(".") if len(part) > 16)]
        for worker in workers or (self.worker,):
            log = worker.log()
            assert "serving on" in log  # the log is the worker's and not empty
            leaked = [s[:12] + "..." for s in secrets_ if s and s in log]
            assert not leaked, f"secrets in {worker.log_path}: {leaked}"

    def close(self) -> None:
        self.agent.close()
        self.channel.close()


@contextlib.contextmanager
def worker_world(directory, config: dict | None = None, *, broker_args: tuple = (),
                 worker_args: tuple = ()):
    """Start a broker (--demo) and a worker in `directory`; stop both at the end."""
    broker = BrokerProcess(directory / "broker", extra_args=broker_args).start()
    creds = broker.credentials
    worker = WorkerProcess(broker.target, directory / "worker", creds["worker_api_key"],
                           creds["agent_api_key"], config=config, extra_args=worker_args)
    try:
        worker.start()
        world = WorkerWorld(broker, worker)
        try:
            yield world
        finally:
            world.close()
    finally:
        try:
            worker.stop()
        finally:
            broker.stop()


def unchanged(h, code, reason):
    """Context: the body fails with (code, reason) and leaves the ledger as it was."""

    class _Check:
        def __enter__(self):
            self.before = h.snapshot()
            self.raises = rpc_error(code, reason)
            return self.raises.__enter__()

        def __exit__(self, *exc):
            suppressed = self.raises.__exit__(*exc)
            assert h.snapshot() == self.before, "a refused request changed the ledger"
            return suppressed

    return _Check()


def agents_copy(receipt: res_pb.Receipt, auth: auth_pb.Authorization) -> res_pb.Receipt:
    """The worker's copy of a receipt as GetReceipt gives it to the agent and owner (of
    an owner without a receipt key): the same, plus the authorization and wallet ids."""
    assert receipt.authorization_id == "", "the worker's copy never names the authorization"
    assert receipt.wallet_id == "", "the worker's copy never names the wallet"
    copy = res_pb.Receipt()
    copy.CopyFrom(receipt)
    copy.authorization_id = auth.authorization_id
    copy.wallet_id = auth.wallet_id
    return copy


def balance_tuple(b) -> tuple[int, int, int]:
    return (b.posted, b.pending, b.available)
