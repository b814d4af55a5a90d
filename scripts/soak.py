"""Soak test: mixed load on a real broker process and a real worker process, watching
their memory and open file descriptors for leaks.

    .venv/bin/python scripts/soak.py [--minutes 10] [--clients 3] [--concurrency 4]
                                     [--tracemalloc FRAMES]

A few client processes (each with a few concurrent tasks) run random scenarios until
the time is up: authorize + cancel, authorize + Execute (generate and burn jobs) at the
worker's WorkerService, an agent hanging up mid-job, metering sessions driven straight
at the broker (usage reports, finish), sessions abandoned to the hold's expiry, holds
left to expire, and reads (balances, wallets, transfers, authorizations, receipts,
offers). Meanwhile the broker's and the worker's VmRSS (split into RssAnon and RssFile)
and open fds are sampled every few seconds from /proc. Two checks, after a warm-up
(the first 20% of the run):

- growth: the mean of the first third of the samples against the mean of the last
  third must stay within --tolerance (10%), for memory and fds;
- flat curve: a straight line fitted (least squares) to the memory samples of the last
  third of the run must not rise by more than --slope-tolerance (3%) of their mean
  across that third, beyond the noise: the check fails when the rise less two standard
  errors of the fit is above the tolerance. The slope is printed in MB per hour, with its
  standard error (the noise of the samples alone moves the fitted slope by about that
  much; the worker's torch allocator swings by several MB between samples).

The ledger audit (GetLedgerSummary) must be clean at the end and no scenario may fail
unexpectedly (an abandoned session's 2 s hold that ran out before the session opened
or reported is counted, not failed, when its expiry has indeed passed: that happens on
an overloaded machine and the broker is right to refuse it). `--samples FILE` writes
every sample, for a curve.

Which memory: VmRSS counts the pages of the memory-mapped LMDB file (RssFile) that the
broker has touched, and the ledger is append-only, so that part grows with the data
(about 10 KB per scenario here) by design: it is page cache the kernel can reclaim, not
a leak. The verdict therefore uses the processes' own memory, VmRSS minus RssFile
(RssAnon + RssShmem), and for the worker also minus its model weights (the parameter
counts of GetCapabilities, 4 bytes each: loaded once at start, on the CPU here);
`--memory vmrss` checks the broker's raw VmRSS instead. Both are printed.

`--tracemalloc FRAMES` runs broker and worker with tracemalloc (FRAMES frames per
allocation; slower) through scripts/tracemalloc_probe, which writes a snapshot every
minute, and prints the allocation sites that grew most between the first snapshot after
the warm-up and the last: where Python memory goes (not grpc's or LMDB's C heap).

Prints one summary line and one JSON line; exits 1 on growth beyond the tolerances, an
unexpected error or a ledger violation (2 when the processes cannot be started).
Not part of `make test`: run it with `make soak` (`make soak SOAK_MINUTES=30`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from broker.v1 import admin_service_pb2 as admin_pb  # noqa: E402
from broker.v1 import admin_service_pb2_grpc as admin_grpc  # noqa: E402
from broker.v1 import authorization_service_pb2 as auth_pb  # noqa: E402
from broker.v1 import authorization_service_pb2_grpc as auth_grpc  # noqa: E402
from broker.v1 import resources_pb2 as res_pb  # noqa: E402
from broker.v1 import wallet_service_pb2 as wallet_pb  # noqa: E402
from broker.v1 import wallet_service_pb2_grpc as wallet_grpc  # noqa: E402
from broker.v1 import worker_registry_service_pb2 as registry_pb  # noqa: E402
from broker.v1 import worker_registry_service_pb2_grpc as registry_grpc  # noqa: E402
from common.status import error_info  # noqa: E402
from worker.v1 import worker_service_pb2 as worker_pb  # noqa: E402
from worker.v1 import worker_service_pb2_grpc as worker_grpc  # noqa: E402

WARMUP_FRACTION = 0.2
TREASURY = 10**12
WALLET_CAP = 10**10
REFILL_TARGET = 20_000_000
# Scenario weights: what a client task picks each time round.
SCENARIOS = {"generate": 3, "burn": 2, "hangup": 1, "cancel": 2, "meter": 3, "abandon": 1,
             "expire": 1, "read": 4}


def bearer(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def rid() -> str:
    return uuid.uuid4().hex


# -- the client processes ------------------------------------------------------------------


class Unexpected(Exception):
    pass


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        info = error_info(error)
        return f"{error.code().name} {info.reason if info else ''}: {error.details()}"
    return f"{type(error).__name__}: {error}"


def reason(error: BaseException) -> str:
    info = error_info(error) if isinstance(error, grpc.RpcError) else None
    return info.reason if info else ""


class LoadClient:
    """One client process: an agent (and its owner) of its own tenant, plus the demo
    worker key for the metering sessions it drives itself."""

    def __init__(self, cfg: dict, seed: int):
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.stats: Counter = Counter()
        self.errors: list[str] = []
        self.recent: list[str] = []  # recent authorization ids, for reads

    async def run(self, deadline: float, concurrency: int) -> dict:
        # Imported here: the metering client needs a running event loop per process.
        from worker.broker_link import MeteringSession, SessionClosed

        self.MeteringSession, self.SessionClosed = MeteringSession, SessionClosed
        async with grpc.aio.insecure_channel(self.cfg["broker"]) as broker, \
                grpc.aio.insecure_channel(self.cfg["worker"]) as worker:
            self.broker = broker
            self.auths = auth_grpc.AuthorizationServiceStub(broker)
            self.wallets = wallet_grpc.WalletServiceStub(broker)
            self.registry = registry_grpc.WorkerRegistryServiceStub(broker)
            self.jobs = worker_grpc.WorkerServiceStub(worker)
            await asyncio.gather(*(self._task(deadline) for _ in range(concurrency)))
        return {"stats": dict(self.stats), "errors": self.errors[:20]}

    async def _task(self, deadline: float) -> None:
        mix = self.cfg["scenarios"]
        names, weights = list(mix), list(mix.values())
        while time.time() < deadline:
            name = self.rng.choices(names, weights)[0]
            try:
                await getattr(self, f"do_{name}")()
                self.stats[name] += 1
                self.stats["ops"] += 1
            except Exception as error:  # noqa: BLE001 - counted and reported
                self.stats["errors"] += 1
                self.errors.append(f"{name}: {describe(error)}")

    # -- helpers --------------------------------------------------------------------------

    async def authorize(self, amount: int, ttl_seconds: int = 60,
                        worker_id: str = "") -> auth_pb.Authorization:
        self.stats["rpcs"] += 1
        reply = await self.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid(), amount=amount, ttl_seconds=ttl_seconds,
            scope=res_pb.Scope(worker_id=worker_id)),
            metadata=bearer(self.cfg["agent_key"]), timeout=30)
        self.recent = [*self.recent[-49:], reply.authorization.authorization_id]
        return reply.authorization

    async def cancel(self, authorization_id: str) -> None:
        self.stats["rpcs"] += 1
        await self.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
            request_id=rid(), authorization_id=authorization_id),
            metadata=bearer(self.cfg["agent_key"]), timeout=30)

    async def execute(self, auth: auth_pb.Authorization, job: worker_pb.Job,
                      hang_up_after: int = 0) -> None:
        self.stats["rpcs"] += 1
        call = self.jobs.Execute(worker_pb.ExecuteRequest(voucher=auth.voucher, job=job),
                                 timeout=120)
        outputs, result = 0, None
        try:
            async for event in call:
                kind = event.WhichOneof("kind")
                if kind == "output":
                    outputs += 1
                    if hang_up_after and outputs >= hang_up_after:
                        call.cancel()  # the agent hangs up: the worker settles what ran
                        self.stats["hung_up"] += 1
                        return
                elif kind == "result":
                    result = event.result
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and hang_up_after:
                return
            if reason(error) == "WORKER_BUSY":  # nothing was spent; give the hold back
                self.stats["worker_busy"] += 1
                await self.cancel(auth.authorization_id)
                return
            raise
        if result is None or result.status != worker_pb.JOB_STATUS_COMPLETED:
            raise Unexpected(f"job ended {result}")
        # The worker's copy of the receipt never names the authorization.
        if result.receipt.authorization_id or not 0 < result.receipt.charged <= auth.amount:
            raise Unexpected(f"bad receipt {result.receipt}")

    # -- scenarios ------------------------------------------------------------------------

    async def do_generate(self) -> None:
        auth = await self.authorize(500_000, worker_id=self.cfg["worker_id"])
        prompt = "".join(self.rng.choice("abcdefgh ") for _ in range(self.rng.randint(3, 40)))
        await self.execute(auth, worker_pb.Job(generate=worker_pb.GenerateJob(
            model="tiny-lm", prompt=prompt, max_new_tokens=self.rng.randint(4, 24),
            seed=self.rng.randint(0, 1000), temperature_milli=self.rng.choice([0, 700]))))

    async def do_burn(self) -> None:
        auth = await self.authorize(500_000, worker_id=self.cfg["worker_id"])
        await self.execute(auth, worker_pb.Job(burn=worker_pb.BurnJob(
            duration_ms=self.rng.randint(20, 200))))

    async def do_hangup(self) -> None:
        auth = await self.authorize(500_000, worker_id=self.cfg["worker_id"])
        await self.execute(auth, worker_pb.Job(generate=worker_pb.GenerateJob(
            model="tiny-lm", prompt="hang up", max_new_tokens=400)),
            hang_up_after=self.rng.randint(1, 6))

    async def do_cancel(self) -> None:
        auth = await self.authorize(self.rng.randint(1, 300_000))
        await self.cancel(auth.authorization_id)

    async def _open(self, auth) -> object:
        self.stats["rpcs"] += 1
        return await self.MeteringSession.open(
            self.broker, self.cfg["worker_key"], auth.voucher, self.cfg["meter_worker_id"],
            request_id=rid())

    async def do_meter(self) -> None:
        auth = await self.authorize(200_000)
        session = await self._open(auth)
        gpu_ms = 0
        for _ in range(self.rng.randint(1, 4)):
            await asyncio.sleep(0.05)
            if session.stopped.is_set():
                break
            gpu_ms += self.rng.randint(1, 40)
            await session.report({"gpu_ms": gpu_ms, "calls": 1, "output_tokens": gpu_ms})
        receipt = await session.finish({"gpu_ms": gpu_ms + 1, "calls": 1,
                                        "output_tokens": gpu_ms})
        if receipt.authorization_id or receipt.held != auth.amount:
            raise Unexpected(f"bad receipt {receipt}")

    async def do_abandon(self) -> None:
        """The worker vanishes mid-session: the broker settles at the hold's expiry."""
        auth = await self.authorize(50_000, ttl_seconds=2)
        session = None
        try:
            session = await self._open(auth)
            await asyncio.sleep(0.05)
            await session.report({"gpu_ms": 5, "calls": 1})
        except (grpc.RpcError, self.SessionClosed) as error:
            # On a machine loaded enough that the 2 s hold runs out before the session
            # opens or reports, the broker rightly refuses the voucher or has settled the
            # session already: not an error, if the hold's expiry has indeed passed.
            if not self.expired_first(auth, error):
                raise
            self.stats["abandon_expired_first"] += 1
        finally:
            if session is not None:
                await session.abandon()

    def expired_first(self, auth: auth_pb.Authorization, error: BaseException) -> bool:
        status = error.error if isinstance(error, self.SessionClosed) else error
        return reason(status) in ("VOUCHER_EXPIRED", "SESSION_ALREADY_SETTLED") and \
            time.time() * 1000 >= auth.expire_time.ToMilliseconds()

    async def do_expire(self) -> None:
        await self.authorize(self.rng.randint(1, 20_000), ttl_seconds=1)

    async def do_read(self) -> None:
        agent, owner = bearer(self.cfg["agent_key"]), bearer(self.cfg["owner_key"])
        calls = [
            self.wallets.GetBalance(wallet_pb.GetBalanceRequest(), metadata=agent, timeout=30),
            self.wallets.GetWallet(wallet_pb.GetWalletRequest(), metadata=agent, timeout=30),
            self.wallets.ListTransfers(wallet_pb.ListTransfersRequest(page_size=50),
                                       metadata=agent, timeout=30),
            self.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(page_size=50),
                                          metadata=agent, timeout=30),
            self.registry.ListOffers(registry_pb.ListOffersRequest(), metadata=agent,
                                     timeout=30),
            self.wallets.ListWallets(wallet_pb.ListWalletsRequest(), metadata=owner,
                                     timeout=30),
            self.wallets.GetBalance(wallet_pb.GetBalanceRequest(), metadata=owner, timeout=30),
        ]
        if self.recent:
            auth_id = self.rng.choice(self.recent)
            calls.append(self.auths.GetAuthorization(auth_pb.GetAuthorizationRequest(
                authorization_id=auth_id), metadata=owner, timeout=30))
        self.stats["rpcs"] += len(calls)
        await asyncio.gather(*calls)
        if self.recent:
            try:
                self.stats["rpcs"] += 1
                await self.auths.GetReceipt(auth_pb.GetReceiptRequest(
                    authorization_id=self.rng.choice(self.recent)), metadata=agent, timeout=30)
            except grpc.RpcError as error:
                if reason(error) != "RECEIPT_NOT_READY":
                    raise


def client_main(cfg: dict, seed: int, deadline: float, concurrency: int, out) -> None:
    try:
        result = asyncio.run(LoadClient(cfg, seed).run(deadline, concurrency))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        result = {"stats": {"errors": 1}, "errors": [f"client crashed: {describe(error)}"]}
    out.put(result)


# -- the parent: processes, setup, sampling, verdict -------------------------------------------


def proc_sample(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    rss, rss_file = fields["VmRSS"], fields.get("RssFile", 0)
    return {"rss": rss, "rss_file": rss_file, "private": rss - rss_file,
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def flatness(values: list[float]) -> dict:
    """Mean of the first and of the last third, and the growth between them."""
    third = max(1, len(values) // 3)
    first, last = statistics.fmean(values[:third]), statistics.fmean(values[-third:])
    return {"first": first, "last": last, "growth": (last - first) / first if first else 0.0,
            "max": max(values), "min": min(values)}


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of (t, value) points, per second, and its standard error (0, 0
    for fewer than 3 points)."""
    if len(points) < 3:
        return 0.0, 0.0
    ts, vs = [t for t, _ in points], [v for _, v in points]
    fit = statistics.linear_regression(ts, vs)
    mean_t = statistics.fmean(ts)
    spread = sum((t - mean_t) ** 2 for t in ts)
    residual = sum((v - fit.intercept - fit.slope * t) ** 2 for t, v in points)
    return fit.slope, (residual / (len(points) - 2) / spread) ** 0.5 if spread else 0.0


def last_third_rise(samples: list[dict], key: str, duration: float) -> dict:
    """The fitted line over the last third of the run: its slope (MB per hour, with its
    standard error: how far from zero the noise alone may put it) and how far it rises
    across that third, relative to the mean there."""
    points = [(s["t"], s[key]) for s in samples if s["t"] >= duration * 2 / 3]
    per_s, error = slope(points)
    span = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    mean = statistics.fmean(v for _, v in points) if points else 0.0
    return {"mb_per_hour": per_s * 3600 / 2**20, "mb_per_hour_se": error * 3600 / 2**20,
            "points": len(points), "rise": per_s * span / mean if mean else 0.0,
            "rise_se": error * span / mean if mean else 0.0}


def model_weight_bytes(worker) -> int:
    """The worker's model weights, loaded once at start: parameters x 4 bytes (float32)."""
    with grpc.insecure_channel(worker.target) as channel:
        caps = worker_grpc.WorkerServiceStub(channel).GetCapabilities(
            worker_pb.GetCapabilitiesRequest(), timeout=10).capabilities
    return 4 * sum(size.parameters for size in caps.model_sizes)


def tracemalloc_report(directory: Path, pid: int, after_s: float, limit: int = 15) -> str:
    """The allocation sites of `pid` that grew most between its first snapshot taken
    after `after_s` seconds and its last one."""
    import tracemalloc

    snaps = sorted((float(p.stem.split("-")[1]), p) for p in directory.glob(f"{pid}-*.snap"))
    later = [p for t, p in snaps if t >= after_s]
    if len(later) < 2:
        return f"  (pid {pid}: fewer than two snapshots after the warm-up)"
    first = tracemalloc.Snapshot.load(str(later[0]))
    last = tracemalloc.Snapshot.load(str(later[-1]))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    first, last = first.filter_traces(ignore), last.filter_traces(ignore)
    group = "traceback" if last.traceback_limit > 1 else "lineno"
    lines = [f"  pid {pid}: traced {sum(t.size for t in first.traces) / 2**20:.2f} -> "
             f"{sum(t.size for t in last.traces) / 2**20:.2f} MB between "
             f"{later[0].stem.split('-')[1].lstrip('0')} s and "
             f"{later[-1].stem.split('-')[1].lstrip('0')} s"]
    for diff in last.compare_to(first, group)[:limit]:
        lines.append(f"  {diff.size_diff / 1024:+9.1f} KiB {diff.count_diff:+7d} blocks  "
                     f"(now {diff.size / 1024:.1f} KiB)")
        for frame in list(diff.traceback)[-8:]:  # the innermost frames
            lines.append(f"      {frame.filename}:{frame.lineno}")
    return "\n".join(lines)


def setup_tenants(broker, count: int) -> tuple[list[dict], str]:
    """One tenant per client process, and a worker id for directly driven sessions."""
    creds = broker.credentials
    with grpc.insecure_channel(broker.target) as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        md = bearer(creds["admin_api_key"])
        meter_worker = registry_grpc.WorkerRegistryServiceStub(channel).RegisterWorker(
            registry_pb.RegisterWorkerRequest(
                request_id=rid(), endpoint="127.0.0.1:9",
                capabilities=registry_pb.Capabilities(resource_class="cpu",
                                                      models=["tiny-lm"]),
                prices=res_pb.PriceSheet(gpu_second_price=1000, call_price=5,
                                         output_tokens_1k_price=100)),
            metadata=bearer(creds["worker_api_key"]), timeout=10).worker_id
        tenants = []
        for i in range(count):
            owner = admin.CreateOwner(admin_pb.CreateOwnerRequest(
                request_id=rid(), display_name=f"soak tenant {i}"), metadata=md, timeout=10)
            admin.CreditTreasury(admin_pb.CreditTreasuryRequest(
                request_id=rid(), owner_id=owner.owner_id, amount=TREASURY), metadata=md,
                timeout=10)
            owner_key = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
                request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=owner.owner_id),
                metadata=md, timeout=10).api_key
            wallets = wallet_grpc.WalletServiceStub(channel)
            wallet = wallets.CreateWallet(wallet_pb.CreateWalletRequest(
                request_id=rid(), display_name=f"soak wallet {i}", cap=WALLET_CAP,
                refill_target=REFILL_TARGET), metadata=bearer(owner_key), timeout=10).wallet
            wallets.FundWallet(wallet_pb.FundWalletRequest(
                request_id=rid(), wallet_id=wallet.wallet_id, amount=REFILL_TARGET),
                metadata=bearer(owner_key), timeout=10)
            agent_key = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
                request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=owner.owner_id,
                wallet_id=wallet.wallet_id), metadata=md, timeout=10).api_key
            tenants.append({"owner_key": owner_key, "agent_key": agent_key})
    return tenants, meter_worker


def ledger_violations(broker) -> list[str]:
    with grpc.insecure_channel(broker.target) as channel:
        reply = admin_grpc.AdminServiceStub(channel).GetLedgerSummary(
            admin_pb.GetLedgerSummaryRequest(),
            metadata=bearer(broker.credentials["admin_api_key"]), timeout=300)
    return list(reply.violations)


def scenario_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in SCENARIOS or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: want NAME=WEIGHT, NAME one of "
                                             f"{', '.join(SCENARIOS)}")
        mix[name] = int(weight)
    return mix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (10)")
    parser.add_argument("--clients", type=int, default=3, help="client processes (3)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="concurrent scenarios per client process (4)")
    parser.add_argument("--sample-s", type=float, default=5.0,
                        help="seconds between samples of memory and fds (5)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="largest allowed growth after the warm-up (0.10)")
    parser.add_argument("--slope-tolerance", type=float, default=0.03,
                        help="largest allowed rise of the line fitted to the memory of the "
                             "last third of the run, relative to its mean (0.03)")
    parser.add_argument("--memory", choices=("private", "vmrss"), default="private",
                        help="broker memory figure the verdict checks: VmRSS minus the LMDB "
                             "file pages (private, the default) or the raw VmRSS")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace Python allocations in broker and worker and print the "
                             "sites that grew most (0: off)")
    parser.add_argument("--scenarios", type=scenario_mix, default=SCENARIOS,
                        metavar="NAME=WEIGHT,...",
                        help="the scenario mix, to find which load grows memory (default: "
                             + ",".join(f"{k}={v}" for k, v in SCENARIOS.items()) + ")")
    parser.add_argument("--samples", type=Path, metavar="FILE",
                        help="also write every sample (seconds, memory in bytes, fds) to FILE, "
                             "one JSON object a line")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directory and logs (printed at the end)")
    args = parser.parse_args()

    from tests.integration.broker_process import BrokerProcess
    from tests.integration.worker_process import WorkerProcess

    workdir = Path(tempfile.mkdtemp(prefix="broker-soak-"))
    traces = workdir / "tracemalloc"
    if args.tracemalloc:  # inherited by the broker and worker started below
        traces.mkdir()
        probe = str(ROOT / "scripts" / "tracemalloc_probe")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, (probe, os.environ.get("PYTHONPATH"))))
        os.environ.update(SOAK_TRACEMALLOC_DIR=str(traces),
                          SOAK_TRACEMALLOC_FRAMES=str(args.tracemalloc))
    broker = worker = None
    clients: list = []
    try:
        try:
            broker = BrokerProcess(workdir / "broker")  # assigned first: stopped if it fails
            broker.start()
            creds = broker.credentials
            worker = WorkerProcess(broker.target, workdir / "worker", creds["worker_api_key"],
                                   creds["agent_api_key"],
                                   config={"max_concurrent_jobs": 4, "report_every_tokens": 8})
            worker.start()
            tenants, meter_worker = setup_tenants(broker, args.clients)
            weights = model_weight_bytes(worker)
        except Exception as error:  # noqa: BLE001
            print(f"soak: cannot start the broker and worker: {describe(error)}",
                  file=sys.stderr)
            return 2
        finally:
            for name in ("SOAK_TRACEMALLOC_DIR", "SOAK_TRACEMALLOC_FRAMES"):
                os.environ.pop(name, None)  # not for the client processes
        pid, worker_pid = broker.proc.pid, worker.proc.pid
        duration = args.minutes * 60
        start = time.time()
        deadline = start + duration
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        for i, tenant in enumerate(tenants):
            cfg = {**tenant, "broker": broker.target, "worker": worker.target,
                   "worker_id": worker.worker_id, "worker_key": creds["worker_api_key"],
                   "meter_worker_id": meter_worker, "scenarios": args.scenarios}
            process = ctx.Process(target=client_main, name=f"soak-client-{i}",
                                  args=(cfg, 1000 + i, deadline, args.concurrency, results))
            process.start()
            clients.append(process)
        print(f"soak: {args.minutes:g} min, {args.clients} clients x {args.concurrency} "
              f"tasks against broker pid {pid} and worker pid {worker_pid}", file=sys.stderr)

        def sample() -> dict:
            w = proc_sample(worker_pid)
            return {"t": time.time() - start, **proc_sample(pid), "worker_private":
                    w["private"] - weights, "worker_fds": w["fds"], "worker_rss": w["rss"]}

        samples = []
        next_report = start + 60
        while time.time() < deadline:
            samples.append(sample())
            if time.time() >= next_report:
                s = samples[-1]
                print(f"  {s['t']:6.0f} s  broker VmRSS {s['rss'] / 2**20:6.1f} MB (private "
                      f"{s['private'] / 2**20:5.1f} MB)  fds {s['fds']}; worker private "
                      f"{s['worker_private'] / 2**20:6.1f} MB  fds {s['worker_fds']}",
                      file=sys.stderr)
                next_report += 60
            time.sleep(min(args.sample_s, max(0.0, deadline - time.time())))
        samples.append(sample())

        outcomes = [results.get(timeout=180) for _ in clients]
        for process in clients:
            process.join(30)
        elapsed = time.time() - start
        stats: Counter = Counter()
        errors: list[str] = []
        for outcome in outcomes:
            stats.update(outcome["stats"])
            errors += outcome["errors"]
        violations = ledger_violations(broker)
        broker_alive, worker_alive = broker.proc.poll() is None, worker.alive()
    finally:
        for process in clients:
            if process.is_alive():
                process.kill()
        if worker is not None:
            try:
                worker.stop()
            except Exception:  # noqa: BLE001 - best effort
                worker.kill()
        if broker is not None:
            broker.stop()

    warmup_s = WARMUP_FRACTION * duration
    post = [s for s in samples if s["t"] >= warmup_s]
    if len(post) < 3:
        print(f"soak: only {len(post)} samples after the warm-up; use a longer run or a "
              "shorter --sample-s", file=sys.stderr)
        return 1
    rss = flatness([s["rss"] for s in post])
    private = flatness([s["private"] for s in post])
    fds = flatness([s["fds"] for s in post])
    w_private = flatness([s["worker_private"] for s in post])
    w_fds = flatness([s["worker_fds"] for s in post])
    checked_key = "private" if args.memory == "private" else "rss"
    rise = last_third_rise(samples, checked_key, duration)
    w_rise = last_third_rise(samples, "worker_private", duration)
    warmup = [s for s in samples if s["t"] < warmup_s] or samples[:1]
    failures = []
    checked = private if args.memory == "private" else rss
    label = "broker private memory" if checked is private else "broker VmRSS"
    for name, figures in ((label, checked), ("broker fds", fds),
                          ("worker private memory", w_private), ("worker fds", w_fds)):
        if figures["growth"] > args.tolerance:
            failures.append(f"{name} grew {figures['growth']:+.1%}")
    for name, line in ((label, rise), ("worker private memory", w_rise)):
        if line["rise"] - 2 * line["rise_se"] > args.slope_tolerance:
            failures.append(f"{name} still rising over the last third ({line['rise']:+.1%} "
                            f"± {line['rise_se']:.1%}, {line['mb_per_hour']:+.1f} MB/h)")
    if stats["errors"]:
        failures.append(f"{stats['errors']} scenarios failed")
    if violations:
        failures.append(f"{len(violations)} ledger violations")
    if not (broker_alive and worker_alive):
        failures.append("a process died")
    ops_per_s = stats["ops"] / elapsed
    verdict = "FAIL: " + "; ".join(failures) if failures else "PASS"
    mb = 2**20
    if args.tracemalloc:
        print("soak: Python allocations that grew most after the warm-up (tracemalloc)",
              file=sys.stderr)
        for who, p in (("broker", pid), ("worker", worker_pid)):
            print(f" {who}:\n{tracemalloc_report(traces, p, warmup_s)}", file=sys.stderr)
    print(f"soak {args.minutes:g} min: {stats['ops']} scenarios ({ops_per_s:.1f}/s, "
          f"{stats['rpcs'] / elapsed:.0f} RPCs/s), {stats['errors']} errors; broker "
          f"private memory {private['first'] / mb:.1f} -> {private['last'] / mb:.1f} MB "
          f"({private['growth']:+.1%}; last third {rise['mb_per_hour']:+.2f} "
          f"± {rise['mb_per_hour_se']:.2f} MB/h, "
          f"{rise['rise']:+.1%}), VmRSS {rss['first'] / mb:.1f} -> "
          f"{rss['last'] / mb:.1f} MB ({rss['growth']:+.1%}, of it LMDB file pages "
          f"{post[-1]['rss_file'] / mb:.1f} MB at the end), fds {fds['first']:.0f} -> "
          f"{fds['last']:.0f} ({fds['growth']:+.1%}); worker private memory less "
          f"{weights / mb:.1f} MB of weights {w_private['first'] / mb:.1f} -> "
          f"{w_private['last'] / mb:.1f} MB ({w_private['growth']:+.1%}; last third "
          f"{w_rise['mb_per_hour']:+.2f} ± {w_rise['mb_per_hour_se']:.2f} MB/h, "
          f"{w_rise['rise']:+.1%}), fds "
          f"{w_fds['first']:.0f} -> {w_fds['last']:.0f}; ledger "
          f"{'clean' if not violations else 'VIOLATED'}: {verdict}")

    def memory(figures: dict, line: dict, first: float) -> dict:
        return {"warmup_start": round(first / mb, 1), "start": round(figures["first"] / mb, 1),
                "end": round(figures["last"] / mb, 1), "max": round(figures["max"] / mb, 1),
                "growth": round(figures["growth"], 4),
                "last_third_mb_per_hour": round(line["mb_per_hour"], 3),
                "last_third_mb_per_hour_se": round(line["mb_per_hour_se"], 3),
                "last_third_rise": round(line["rise"], 4)}

    by_minute = {}
    for s in samples:  # the last sample of each minute
        by_minute[int(s["t"] // 60)] = s
    print(json.dumps({
        "minutes": args.minutes, "clients": args.clients, "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 1), "ops": stats["ops"],
        "ops_per_s": round(ops_per_s, 2), "rpcs_per_s": round(stats["rpcs"] / elapsed, 1),
        "scenarios": {k: stats[k] for k in args.scenarios},
        "worker_busy": stats["worker_busy"], "hung_up": stats["hung_up"],
        "abandon_expired_first": stats["abandon_expired_first"],
        "errors": stats["errors"], "error_samples": errors[:10],
        "broker_rss_mb": memory(rss, last_third_rise(samples, "rss", duration),
                                warmup[0]["rss"]),
        "broker_private_mb": memory(private, last_third_rise(samples, "private", duration),
                                    warmup[0]["private"]),
        "broker_rss_file_mb_end": round(post[-1]["rss_file"] / mb, 1),
        "memory_checked": args.memory,
        "broker_fds": {"warmup_start": warmup[0]["fds"], "start": round(fds["first"], 1),
                       "end": round(fds["last"], 1), "max": fds["max"],
                       "growth": round(fds["growth"], 4)},
        "worker_private_mb": memory(w_private, w_rise, warmup[0]["worker_private"]),
        "worker_weights_mb": round(weights / mb, 2),
        "worker_rss_mb_end": round(post[-1]["worker_rss"] / mb, 1),
        "worker_fds": {"start": round(w_fds["first"], 1), "end": round(w_fds["last"], 1)},
        "private_mb_by_minute": {
            "broker": [round(s["private"] / mb, 1) for s in by_minute.values()],
            "worker": [round(s["worker_private"] / mb, 1) for s in by_minute.values()]},
        "samples": len(samples), "samples_after_warmup": len(post),
        "tolerance": args.tolerance, "slope_tolerance": args.slope_tolerance,
        "ledger_violations": violations[:10], "passed": not failures}))
    if args.samples:
        args.samples.write_text("".join(json.dumps(s) + "\n" for s in samples))
    if args.keep:
        print(f"soak: data and logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
