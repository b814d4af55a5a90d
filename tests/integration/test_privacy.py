"""Privacy of spend data, with a real broker, a real worker and a recording proxy
between them (docs/privacy.md): workers receive no identity and no labels, receipts are
sealed to the owner, statements and payouts are aggregated and coarse, signing keys
rotate, and no secret reaches a log.

The tests share one broker and worker and run in file order; the last one stops both
and reads what the broker kept on disk.
"""

import base64
import contextlib
import json
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from broker.client import (
    BrokerClient,
    BrokerClientError,
    narrow_voucher,
    open_sealed,
    sign_mandate,
)
from broker.core.labels import WORKER_SCOPE_FIELDS
from broker.datadir import DataDir
from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import delegation_service_pb2 as delegation_pb
from broker.v1 import delegation_service_pb2_grpc as delegation_grpc
from broker.v1 import metering_service_pb2 as meter_pb
from broker.v1 import policy_service_pb2 as policy_pb
from broker.v1 import policy_service_pb2_grpc as policy_grpc
from broker.v1 import statement_service_pb2 as statement_pb
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import worker_registry_service_pb2 as registry_pb
from common import mandates, sealing, usage_signing, vouchers
from common.files import write_secret
from common.money import charge_for
from worker.v1 import worker_service_pb2 as worker_pb

from .broker_process import ROOT
from .capture_proxy import CapturingProxy
from .conftest import (
    WorkerWorld,
    _Bound,
    bearer,
    burn_job,
    check_worker_error,
    generate_job,
    rid,
    rpc_error,
)
from .proxied_world import proxied_worker_world
from .test_grpcurl import find_grpcurl

LABELS = {"nightjar.project": "nightjar-phase-2", "nightjar.purpose": "fold-proteins-for-zeta"}
OWNER_NAME = "Nightjar Biotech Holdings"
WALLET_NAME = "nightjar-folding-agent"
KEY_DESCRIPTION = "nightjar agent key 7731"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GRANULARITY_HOUR = statement_pb.STATEMENT_GRANULARITY_HOUR
GRANULARITY_DAY = statement_pb.STATEMENT_GRANULARITY_DAY


@dataclass
class Tenant:
    owner_id: str
    wallet_id: str
    owner: BrokerClient
    agent: BrokerClient
    agent_key: str
    agent_key_id: str
    owner_key: str
    receipt_key: PrivateKey
    key_file: object  # Path of the private receipt key, as `broker receipts keygen` writes


@dataclass
class Privacy:
    world: WorkerWorld
    proxy: CapturingProxy
    t: Tenant
    directory: object
    settled: list = field(default_factory=list)  # (authorization id, receipt) of t's jobs
    retired_seeds: list = field(default_factory=list)  # receipt keys rotated out

    @property
    def h(self):
        return self.world.h

    def run_job(self, job: worker_pb.Job, amount: int = 400_000, *, labels=LABELS):
        auth = self.world.authorize(amount, client=self.t.agent, labels=labels)
        run = self.world.execute(auth.voucher, job)
        assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
        receipt = settled_receipt(self.t.agent, auth.authorization_id)
        self.settled.append((auth.authorization_id, receipt))
        return auth, run, receipt


def make_tenant(h, directory) -> Tenant:
    admin = h.admin.admin
    owner = admin.CreateOwner(admin_pb.CreateOwnerRequest(request_id=rid(),
                                                          display_name=OWNER_NAME))
    admin.CreditTreasury(admin_pb.CreditTreasuryRequest(request_id=rid(),
                                                        owner_id=owner.owner_id,
                                                        amount=50_000_000))
    owner_key = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=owner.owner_id,
        description="nightjar owner key")).api_key
    owner_client = BrokerClient(h.target, owner_key)
    wallet = owner_client.create_wallet(10_000_000, 5_000_000, display_name=WALLET_NAME)
    owner_client.fund_wallet(wallet.wallet_id, 5_000_000)
    agent = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=owner.owner_id,
        wallet_id=wallet.wallet_id, description=KEY_DESCRIPTION))
    key_file = directory / "owner-receipt.key"
    keygen = cli("receipts", "keygen", "--out", str(key_file))
    assert keygen.returncode == 0, keygen.stderr
    receipt_key = sealing.load_private_key(key_file.read_text())
    public = re.search(r"public key \(base64.*\): (\S+)", keygen.stdout).group(1)
    assert base64.b64decode(public) == bytes(receipt_key.public_key)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    registered = owner_client.register_receipt_key(base64.b64decode(public))
    assert registered.key_id == sealing.receipt_key_id(bytes(receipt_key.public_key))
    return Tenant(owner.owner_id, wallet.wallet_id, owner_client,
                  BrokerClient(h.target, agent.api_key), agent.api_key, agent.key_id,
                  owner_key, receipt_key, key_file)


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def p(tmp_path_factory):
    directory = tmp_path_factory.mktemp("privacy")
    # The worker reaches the broker only through the proxy, which keeps every message.
    with proxied_worker_world(directory) as (world, proxy):
        tenant = make_tenant(world.h, directory)
        world.api_keys += [tenant.agent_key, tenant.owner_key]
        yield Privacy(world, proxy, tenant, directory)
        tenant.owner.close()
        tenant.agent.close()


# -- helpers ------------------------------------------------------------------------------


def settled_receipt(client, authorization_id, timeout=10.0):
    """The receipt, once the worker has settled (WorkerWorld.wait_settled for another
    tenant's agent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_receipt(authorization_id)
        except BrokerClientError as error:
            if error.reason != "RECEIPT_NOT_READY" or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def views(data: bytes) -> list[bytes]:
    """The bytes themselves, and every base64 or base64url run inside them decoded:
    an identity must not hide in an encoded token either."""
    out = [data]
    for run in re.findall(rb"[A-Za-z0-9_\-+/]{16,}={0,2}", data):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError):
                out.append(decode(run + b"=" * (-len(run) % 4)))
    return out


def hex_part(ident: str) -> str:
    return ident.split("_", 1)[1]


def windows(text: str, n: int = 8) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


# -- 1. workers receive no identity --------------------------------------------------------


def test_a_full_cycle_shows_the_worker_no_identity(p):
    w, t = p.world, p.t
    sent_to_worker = []
    auths = []
    # Long enough for usage reports: the generate job reports every 64 tokens.
    for job in (generate_job("secret prompt", max_new_tokens=70), burn_job(300)):
        auth = w.authorize(400_000, client=t.agent, labels=LABELS)
        request = worker_pb.ExecuteRequest(voucher=auth.voucher, job=job)
        sent_to_worker.append(request.SerializeToString())
        run = w.execute(auth.voucher, job)
        assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
        # The worker's copy of the receipt names no authorization and holds nothing sealed.
        assert run.result.receipt.authorization_id == ""
        assert run.result.receipt.sealed_itemised == b""
        auths.append(auth)
        p.settled.append((auth.authorization_id,
                          settled_receipt(t.agent, auth.authorization_id)))
    # A voucher replayed: the broker's refusal reaches the worker too.
    with pytest.raises(grpc.RpcError) as caught:
        w.execute(auths[0].voucher, generate_job())
    check_worker_error(caught.value, grpc.StatusCode.FAILED_PRECONDITION,
                       "VOUCHER_ALREADY_REDEEMED", "broker.v1")

    worker_key = w.creds["worker_api_key"]
    captured = p.proxy.of({worker_key, ""})
    received = [c for c in captured if c.direction in ("received", "status")]
    methods = {c.method for c in received}
    assert {"/broker.v1.WorkerRegistryService/RegisterWorker",
            "/broker.v1.VoucherKeyService/ListVoucherKeys",
            "/broker.v1.MeteringService/MeterWorker"} <= methods, methods  # (issue 21)
    meter = [meter_pb.MeterWorkerResponse.FromString(c.data) for c in received
             if c.method.endswith("/MeterWorker") and c.direction == "received"]
    kinds = [r.WhichOneof("kind") for m in meter for r in m.results]
    assert {"grant", "ack", "settled"} <= set(kinds), kinds
    # (On MeterWorker the refusal is one result's google.rpc.Status, not the call's.)
    assert any(b"VOUCHER_ALREADY_REDEEMED" in c.data for c in received)
    # The capture is the worker's own traffic: its registration answer names it.
    registered = [registry_pb.RegisterWorkerResponse.FromString(c.data) for c in received
                  if c.method.endswith("/RegisterWorker")]
    assert registered and registered[-1].worker_id == w.worker_id

    # Everything the worker was given: the broker's answers and the agents' requests.
    everything = [v for data in [c.data for c in received] + sent_to_worker
                  for v in views(data)]
    transfers = t.agent.list_transfers()
    identifying = {
        "owner id": t.owner_id, "owner id (hex, as in the treasury account)":
            hex_part(t.owner_id), "wallet id": t.wallet_id,
        "agent key id": t.agent_key_id, "agent API key": t.agent_key,
        "owner API key": t.owner_key, "owner name": OWNER_NAME, "wallet name": WALLET_NAME,
        "key description": KEY_DESCRIPTION,
        **{f"label key {k}": k for k in LABELS}, **{f"label {k}": v for k, v in LABELS.items()},
        **{f"authorization {a.authorization_id}": a.authorization_id for a in auths},
        **{f"hold {tr.transfer_id}": tr.transfer_id for tr in transfers},
    }
    for what, value in identifying.items():
        leaks = [v for v in everything if value.encode() in v]
        assert not leaks, f"the worker received the {what}"

    # The ids the worker does see are random and share nothing with authorization ids.
    seen = set()
    for data in sent_to_worker:
        token = worker_pb.ExecuteRequest.FromString(data).voucher
        claims = json.loads(vouchers.b64d(token.split(".")[2]))
        assert set(claims) == {"vid", "amt", "scope", "iat", "exp"}
        assert set(claims["scope"]) <= set(WORKER_SCOPE_FIELDS)
        seen.add(claims["vid"])
    for m in (r for batch in meter for r in batch.results):
        if m.WhichOneof("kind") == "grant":
            seen.add(m.grant.session_id)
        elif m.WhichOneof("kind") == "settled":
            seen.add(m.settled.receipt.receipt_id)
    assert len(seen) >= 6  # two vouchers, two sessions, two receipts
    auth_windows = set().union(*(windows(hex_part(a.authorization_id)) for a in auths))
    for ident in seen:
        assert not windows(hex_part(ident)) & auth_windows, ident
    for window in auth_windows:
        assert not any(window.encode() in v for v in everything)


# -- 2. labels stay inside the broker; receipts are sealed to the owner ---------------------


def test_labels_live_only_in_the_sealed_receipt_once_settled(p):
    t = p.t
    held = p.world.authorize(100_000, client=t.agent, labels=LABELS)
    # The owner has a receipt key: the labels were sealed to it at Authorize, so only the
    # Authorize answer echoes them; the broker cannot read them back.
    assert dict(held.labels) == LABELS
    assert dict(t.agent.get_authorization(held.authorization_id).labels) == {}
    assert dict(t.owner.get_authorization(held.authorization_id).labels) == {}
    t.agent.cancel(held.authorization_id)
    # Settled with a receipt key: the labels are gone from the authorization...
    auth_id, receipt = p.settled[0]
    assert dict(t.owner.get_authorization(auth_id).labels) == {}
    # ...and the receipt holds only the outward part in clear.
    assert receipt.authorization_id == auth_id
    assert receipt.sealed_itemised and receipt.receipt_key_id.startswith("rk_")
    assert (receipt.session_id, receipt.outcome) == ("", "")
    assert not receipt.HasField("usage") and not receipt.HasField("settle_time")
    # Beside the seal, only what checks the charge: the prices and the worker's signed
    # usage, counters and session id (docs/wire.md).
    assert receipt.HasField("prices") and receipt.worker_usage_signature
    assert set(json.loads(receipt.worker_usage_payload)) == {"session_id", "usage", "final"}
    keys = p.h.receipt_keys()
    VerifyKey(keys[receipt.key_id]).verify(receipt.signed_payload, receipt.signature)
    outward = json.loads(receipt.signed_payload)
    assert (outward["charged"], outward["released"]) == (receipt.charged, receipt.released)
    start = receipt.period_start.ToMilliseconds()
    assert start % HOUR_MS == 0 and receipt.period_end.ToMilliseconds() == start + HOUR_MS


def test_sealed_receipt_opens_with_the_right_key_and_is_refused_with_a_wrong_one(p):
    t, h = p.t, p.h
    auth_id, receipt = p.settled[0]
    # The owner fetches the receipt with grpcurl and opens it with the CLI.
    fetched = subprocess.run(
        [find_grpcurl(), "-plaintext", "-H", f"authorization: Bearer {t.owner_key}", "-d",
         json.dumps({"authorization_id": auth_id}), h.target,
         "broker.v1.AuthorizationService/GetReceipt"],
        capture_output=True, text=True, timeout=30, cwd=p.directory)
    assert fetched.returncode == 0, fetched.stderr
    receipt_json = p.directory / "receipt.json"
    receipt_json.write_text(fetched.stdout)
    opened = cli("receipts", "open", "--key", str(t.key_file), "--broker", h.target,
                 str(receipt_json))
    assert opened.returncode == 0, opened.stderr
    item = json.loads(opened.stdout)
    assert item["receipt_id"] == receipt.receipt_id and item["authorization_id"] == auth_id
    assert item["labels"] == LABELS
    caps = p.world.worker.capabilities()
    assert item["model"] == "tiny-lm"
    assert item["resource_class"] == caps.capabilities.resource_class
    assert item["worker_id"] == p.world.worker_id
    assert item["usage"]["output_tokens"] > 0 and item["usage"]["calls"] == 1
    assert charge_for(item["usage"], item["prices"]) == receipt.charged
    assert receipt.period_start.ToMilliseconds() <= item["settle_ms"] \
        < receipt.period_end.ToMilliseconds()
    assert item["open_ms"] <= item["settle_ms"]
    # The worker's own signed usage is in it, and verifies with the worker's key (over
    # the MeterWorker batch that carried the finish, which lists it: docs/wire.md).
    signed_usage = base64.b64decode(item["worker_usage"]["payload"])
    usage_key = SigningKey(bytes.fromhex(p.world.worker.usage_key_path.read_text().strip()))
    usage_signing.verify_proof(bytes(usage_key.verify_key).hex(), signed_usage,
                               base64.b64decode(item["worker_usage"]["signature"]),
                               base64.b64decode(item["worker_usage"]["batch"]))
    assert json.loads(signed_usage)["usage"] == item["usage"]
    # Reading from stdin works the same; so does the library function.
    assert json.loads(cli("receipts", "open", "--key", str(t.key_file),
                          stdin=fetched.stdout).stdout) == item
    assert open_sealed(receipt, t.key_file.read_text(), t.owner.receipt_signing_keys()) == item

    # Another key: refused, clearly, and nothing is printed.
    wrong = p.directory / "wrong.key"
    write_secret(wrong, bytes(PrivateKey.generate()).hex().encode())
    refused = cli("receipts", "open", "--key", str(wrong), str(receipt_json))
    assert refused.returncode == 1 and refused.stdout == ""
    assert "does not open it" in refused.stderr and "another receipt key" in refused.stderr
    with pytest.raises(sealing.SealError):
        open_sealed(receipt, PrivateKey.generate())
    # A sealed part swapped in from another receipt is caught.
    other = p.settled[1][1]
    swapped = type(receipt)()
    swapped.CopyFrom(receipt)
    swapped.sealed_itemised = other.sealed_itemised
    with pytest.raises(sealing.SealError, match="another receipt"):
        open_sealed(swapped, t.receipt_key)


# -- 3. statements and payouts: totals, no line items, coarse times --------------------------


def statement_period() -> tuple[int, int]:
    now = int(time.time() * 1000)
    return now - DAY_MS, now + 1


def test_statement_has_totals_per_wallet_and_payment_model_and_no_line_items(p):
    t, h = p.t, p.h
    p.run_job(burn_job(200), labels={})
    start, end = statement_period()
    statement = t.owner.get_statement(start, end, granularity=GRANULARITY_HOUR)
    receipts = [r for _, r in p.settled]
    assert [(w.wallet_id, w.charged, w.released, w.job_count) for w in statement.wallets] == [
        (t.wallet_id, sum(r.charged for r in receipts), sum(r.released for r in receipts),
         len(receipts))]
    assert statement.job_count == len(receipts)
    assert statement.total_charged == sum(r.charged for r in receipts)
    # Line items exist only for the owner itself: its receipts, newest first, sealed.
    listed = t.owner.list_receipts(t.wallet_id, page_size=1)
    assert [r.receipt_id for r in listed] == [r.receipt_id for r in reversed(receipts)]
    assert all(r.sealed_itemised and not r.HasField("usage") for r in listed)
    assert [r.receipt_id for r in t.agent.list_receipts()] == [r.receipt_id for r in listed]
    by_model = {m.payment_model: (m.charged, m.job_count) for m in statement.payment_models}
    assert sum(c for c, _ in by_model.values()) == statement.total_charged
    assert set(by_model) <= {"metered_time", "per_inference", "mixed", "none"}
    # Coarse: whole hours, and nothing finer anywhere in what was signed.
    assert statement.period_start.ToMilliseconds() % HOUR_MS == 0
    assert statement.period_end.ToMilliseconds() % HOUR_MS == 0
    assert statement.annex == b"" and statement.granularity == GRANULARITY_HOUR
    VerifyKey(h.receipt_keys()[statement.key_id]).verify(statement.signed_payload,
                                                          statement.signature)
    signed = json.loads(statement.signed_payload)
    assert signed["total_charged"] == statement.total_charged
    # No line items: no receipt, authorization, session or worker ids, no labels.
    raw = statement.SerializeToString()
    for auth_id, r in p.settled:
        for ident in (auth_id, r.receipt_id):
            assert ident.encode() not in raw
    for value in (*LABELS.values(), p.world.worker_id, "ses_", "rcpt_", "auth_"):
        assert value.encode() not in raw

    day = t.owner.get_statement(start, end, granularity=GRANULARITY_DAY)
    assert day.period_start.ToMilliseconds() % DAY_MS == 0
    assert day.granularity == GRANULARITY_DAY and day.total_charged == statement.total_charged


def test_statement_annex_is_sealed_to_the_owner(p):
    t = p.t
    start, end = statement_period()
    statement = t.owner.get_statement(start, end, include_annex=True)
    assert statement.annex and statement.receipt_key_id.startswith("rk_")
    assert json.loads(statement.signed_payload)["annex_sha256"]
    annex = open_sealed(statement, t.receipt_key, t.owner.receipt_signing_keys())
    items = {i["receipt_id"]: i for i in annex["items"]}
    assert set(items) == {r.receipt_id for _, r in p.settled}
    for auth_id, r in p.settled:
        assert items[r.receipt_id]["authorization_id"] == auth_id
        inner = open_sealed(base64.b64decode(items[r.receipt_id]["sealed"]), t.receipt_key)
        assert inner["receipt_id"] == r.receipt_id
    # The demo owner registered no receipt key: no annex to seal.
    with rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "RECEIPT_KEY_NOT_REGISTERED"):
        p.h.owner.statements.GetStatement(statement_pb.GetStatementRequest(
            period_start=statement.period_start, period_end=statement.period_end,
            include_annex=True))
    # Another owner's statement does not exist, as far as this owner can tell.
    with pytest.raises(BrokerClientError) as refused:
        t.owner.get_statement(start, end, owner_id=p.h.owner_id)
    assert refused.value.reason == "OWNER_NOT_FOUND"
    with pytest.raises(BrokerClientError) as refused:
        t.owner.get_statement(end, start)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_payouts_are_aggregated_per_period(p):
    worker = BrokerClient(p.h.target, p.world.creds["worker_api_key"])
    start, end = statement_period()
    try:
        statement = worker.get_payout_statement(start, end, granularity=GRANULARITY_HOUR)
        with pytest.raises(BrokerClientError) as refused:
            worker.get_payout_statement(start, end, provider_id="prv_0000000000000000")
        assert refused.value.reason == "PROVIDER_NOT_FOUND"
    finally:
        worker.close()
    receipts = [r for _, r in p.settled]
    assert statement.provider_id == p.h.provider_id
    assert statement.job_count == len(receipts)
    assert statement.total_payout == sum(r.worker_payout for r in receipts)
    assert statement.total_platform_fee == sum(r.platform_fee for r in receipts)
    assert statement.total_charged == statement.total_payout + statement.total_platform_fee
    for period in statement.periods:
        assert period.period_start.ToMilliseconds() % HOUR_MS == 0
        assert period.period_end.ToMilliseconds() - period.period_start.ToMilliseconds() \
            == HOUR_MS
    assert sum(period.job_count for period in statement.periods) == len(receipts)
    raw = statement.SerializeToString()
    for value in (p.t.owner_id, p.t.wallet_id, "auth_", "rcpt_", "ses_", "vch_", "wal_"):
        assert value.encode() not in raw


# -- 4. key rotation ----------------------------------------------------------------------


def key_files_are_private(directory) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_voucher_key_rotation_keeps_older_vouchers_redeemable(p):
    w, t, h = p.world, p.t, p.h
    data = DataDir(w.broker.data_dir)
    older = w.authorize(200_000, client=t.agent)
    old_key_id = older.voucher.split(".")[1]
    admin_key_file = p.directory / "admin.key"
    write_secret(admin_key_file, w.creds["admin_api_key"].encode())
    rotated = cli("keys", "rotate", "voucher", "--broker", h.target, "--admin-key-file",
                  str(admin_key_file))
    assert rotated.returncode == 0, rotated.stderr
    listed = h.anon.keys.ListVoucherKeys(keys_pb.ListVoucherKeysRequest()).keys
    assert [k.active for k in listed] == [True, False]
    new_key_id = listed[0].key_id
    assert listed[1].key_id == old_key_id and new_key_id != old_key_id
    assert new_key_id in rotated.stdout and old_key_id in rotated.stdout
    # The old key retires once every voucher it signed has expired (24 h at most).
    retire = listed[1].retire_time.ToMilliseconds()
    assert 0 < retire - int(time.time() * 1000) - DAY_MS < 5 * 60_000
    assert not listed[0].HasField("retire_time")

    newer = w.authorize(200_000, client=t.agent)
    assert newer.voucher.split(".")[1] == new_key_id
    # The worker still has the old key cached; the new one it fetches on first sight.
    for auth in (older, newer):
        run = w.execute(auth.voucher, generate_job(max_new_tokens=2))
        assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
        p.settled.append((auth.authorization_id,
                          settled_receipt(t.agent, auth.authorization_id)))
    key_files_are_private(data.voucher_keys)

    # A retried rotation (same request_id) rotates once.
    request = keys_pb.RotateVoucherKeyRequest(request_id=rid())
    first = h.admin.keys.RotateVoucherKey(request)
    assert h.admin.keys.RotateVoucherKey(request) == first
    assert len(list(data.voucher_keys.glob("*.json"))) == 3
    # Only an admin may rotate.
    with rpc_error(grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
        h.owner.keys.RotateVoucherKey(keys_pb.RotateVoucherKeyRequest(request_id=rid()))


def test_receipt_signing_key_rotation_keeps_old_receipts_verifiable(p):
    w, t, h = p.world, p.t, p.h
    data = DataDir(w.broker.data_dir)
    _, old_receipt = p.settled[0]
    old_file = data.receipt_keys / f"{old_receipt.key_id}.json"
    p.retired_seeds.append(json.loads(old_file.read_text())["seed"])
    admin_key_file = p.directory / "admin.key"
    rotated = cli("keys", "rotate", "receipt", "--broker", h.target, "--admin-key-file",
                  str(admin_key_file))
    assert rotated.returncode == 0, rotated.stderr
    _, _, receipt = p.run_job(burn_job(100))
    assert receipt.key_id != old_receipt.key_id
    keys = t.owner.receipt_signing_keys()
    for r in (old_receipt, receipt):
        VerifyKey(keys[r.key_id]).verify(r.signed_payload, r.signature)
        assert open_sealed(r, t.receipt_key, keys)["receipt_id"] == r.receipt_id
    listed = h.anon.statements.ListReceiptSigningKeys(
        statement_pb.ListReceiptSigningKeysRequest()).keys
    assert [(k.key_id, k.active) for k in listed][0] == (receipt.key_id, True)
    assert listed[1].key_id == old_receipt.key_id and listed[1].HasField("retire_time")
    # The old private key is destroyed; its public key stays.
    assert "seed" not in json.loads(old_file.read_text())
    key_files_are_private(data.receipt_keys)


# -- 5. what the broker kept, and the logs -----------------------------------------------


def encodings(raw: bytes) -> list[str]:
    return [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("=")]


# -- 5. delegation: a worker learns nothing about the tree ----------------------------------


def test_a_derived_voucher_shows_the_worker_nothing_of_the_tree(p):
    """Another tenant's owner signs a mandate; its agent makes a sub-budget, whose
    sub-agent makes another; the deepest authorizes under the mandate with a holder key
    and narrows the voucher twice offline; the worker runs that job over gRPC end to end.
    Nothing the worker sees or is sent names the owner, a wallet, an agent key, a parent,
    the mandate or an authorization."""
    w = p.world
    directory = p.directory / "tree"
    directory.mkdir()
    t = make_tenant(p.h, directory)
    w.api_keys += [t.agent_key, t.owner_key]
    owner = _Bound(delegation_grpc.DelegationServiceStub(w.channel), bearer(t.owner_key))
    mandate_key = SigningKey.generate()
    owner.RegisterMandateKey(delegation_pb.RegisterMandateKeyRequest(
        request_id=rid(), public_key=bytes(mandate_key.verify_key)))
    _Bound(policy_grpc.PolicyServiceStub(w.channel), bearer(t.owner_key)).SetSpendPolicy(
        policy_pb.SetSpendPolicyRequest(request_id=rid(), wallet_id=t.wallet_id,
                                        policy=policy_pb.SpendPolicy(require_mandate=True)))
    mandate = sign_mandate(mandate_key, wallet_id=t.wallet_id, per_job=300_000,
                           total=1_000_000, expire_ms=int(time.time() * 1000) + 600_000)
    levels, key = [], t.agent_key
    for name in ("nightjar-sub-budget-one", "nightjar-sub-budget-two"):
        made = _Bound(delegation_grpc.DelegationServiceStub(w.channel), bearer(key)) \
            .CreateSubBudget(delegation_pb.CreateSubBudgetRequest(
                request_id=rid(), display_name=name, cap=500_000, key_description=name))
        levels.append(made)
        key = made.api_key
        w.api_keys.append(key)
    deepest = BrokerClient(p.h.target, key)
    holder, next_holder = SigningKey.generate(), SigningKey.generate()
    auth = deepest.authorize(300_000, worker_id=w.worker_id, mandate=mandate,
                             holder_public_key=bytes(holder.verify_key))
    expire_ms = auth.expire_time.ToMilliseconds()
    once = narrow_voucher(auth.voucher, holder, amount=200_000, expire_ms=expire_ms,
                          scope={}, next_key=next_holder)
    twice = narrow_voucher(once, next_holder, amount=150_000, expire_ms=expire_ms, scope={})
    w.vouchers += [auth.voucher, once, twice, mandate]
    first_captured = len(p.proxy.of({w.creds["worker_api_key"], ""}))

    job = burn_job(200)
    run = w.execute(twice, job)
    assert run.result.status == worker_pb.JOB_STATUS_COMPLETED, run.result.error
    worker_copy = run.result.receipt
    assert (worker_copy.authorization_id, worker_copy.mandate_hash) == ("", "")
    # The owner's books: the carved authorization, its receipt naming the mandate.
    carved = settled_receipt(deepest, deepest.list_receipts()[0].authorization_id)
    assert carved.receipt_id == worker_copy.receipt_id and carved.held == 150_000
    assert carved.mandate_hash == mandates.parse(mandate).mandate_hash
    assert deepest.get_authorization(auth.authorization_id).amount == 150_000  # what is left

    captured = p.proxy.of({w.creds["worker_api_key"], ""})[first_captured:]
    received = [c for c in captured if c.direction in ("received", "status")]
    assert any(c.method.endswith(("/Meter", "/MeterWorker")) for c in received)
    sent = worker_pb.ExecuteRequest(voucher=twice, job=job).SerializeToString()
    everything = [v for data in [c.data for c in received] + [sent] for v in views(data)]
    identifying = {
        "owner id": t.owner_id, "owner id (hex)": hex_part(t.owner_id),
        "root wallet id": t.wallet_id, "root agent key id": t.agent_key_id,
        "mandate hash": carved.mandate_hash, "mandate key id": mandates.parse(mandate).key_id,
        "mandate": mandate, "original authorization": auth.authorization_id,
        "carved authorization": carved.authorization_id,
        **{f"level {i} wallet": m.wallet.wallet_id for i, m in enumerate(levels)},
        **{f"level {i} agent key id": m.key_id for i, m in enumerate(levels)},
        **{f"level {i} name": m.wallet.display_name for i, m in enumerate(levels)},
        **{f"level {i} parent": m.sub_budget.parent_wallet_id for i, m in enumerate(levels)},
    }
    for what, value in identifying.items():
        leaks = [v for v in everything if value.encode() in v]
        assert not leaks, f"the worker received the {what}"
    # What the voucher's parts say: amounts, scope, expiry, random ids and holder keys.
    root_claims = json.loads(vouchers.b64d(twice.split("~")[0].split(".")[2]))
    assert set(root_claims) == {"vid", "amt", "scope", "iat", "exp", "nk"}
    for block in twice.split("~")[1:]:
        assert set(json.loads(vouchers.b64d(block.split(".")[0]))) <= {
            "vid", "amt", "exp", "scope", "nk"}
    deepest.close()
    t.owner.close()
    t.agent.close()


def test_broker_keeps_only_sealed_itemised_parts_and_no_log_holds_a_secret(p):
    w, t = p.world, p.t
    data = DataDir(w.broker.data_dir)
    seeds = [bytes.fromhex(s) for s in p.retired_seeds]
    for directory in (data.voucher_keys, data.receipt_keys):
        for path in directory.glob("*.json"):
            record = json.loads(path.read_text())
            if "seed" in record:
                seeds.append(bytes.fromhex(record["seed"]))
    seeds += [bytes.fromhex(w.worker.usage_key_path.read_text().strip()),
              bytes(t.receipt_key), bytes.fromhex(data.cache_secret_path.read_text().strip())]
    assert len(seeds) >= 6
    assert w.worker.stop() == 0
    assert w.broker.stop() == 0
    # No label in the raw data file, freed pages included: the owner had a receipt key,
    # so the labels were sealed at Authorize and never written in clear (issue 18,
    # item 7; they used to stay readable there after settlement deleted them).
    raw = (data.ledger / "data.mdb").read_bytes()
    assert len(raw) > 0
    assert [v for v in LABELS.values() if v.encode() in raw] == []

    store = data.open_store()
    try:
        def read(tx):
            return {name: list(tx.scan(name)) for name in (
                "receipts", "authorization_labels", "sessions", "journal", "idempotency",
                "authorizations")}
        tables = store.read(read)
    finally:
        store.close()
    mine = [r for _, r in tables["receipts"] if r["owner_id"] == t.owner_id]
    assert len(mine) == len(p.settled)
    assert all(r["sealed"] and "usage" not in r and "labels" not in r for r in mine)
    settled_sessions = [s for _, s in tables["sessions"]
                        if s["receipt_id"] in {r["receipt_id"] for r in mine}]
    assert settled_sessions and all("usage" not in s and "signed_usage" not in s
                                    for s in settled_sessions)
    # No label is left anywhere the broker keeps records (the one cancelled
    # authorization never settled, so its labels stay with it, sealed).
    assert [sorted(r) for _, r in tables["authorization_labels"]] == [
        ["receipt_key_id", "sealed"]]
    stored = json.dumps(tables)
    for value in LABELS.values():
        assert value not in stored
    kinds = [e["kind"] for _, e in tables["journal"]]
    assert "receipt_key_registered" in kinds
    assert kinds.count("voucher_key_rotated") == 2 and "receipt_key_rotated" in kinds

    # The logs of both processes, for every secret in every encoding.
    secrets_ = [*w.api_keys, *LABELS.values()]
    for voucher in w.vouchers:
        secrets_ += [voucher, *(part for part in voucher.split(".") if len(part) > 16)]
    for seed in seeds:
        secrets_ += encodings(seed)
    logs = {"broker": w.broker.log(), "worker": w.worker.log()}
    assert "broker listening" in logs["broker"] and "serving on" in logs["worker"]
    assert "voucher signing key rotated" in logs["broker"]
    for name, log in logs.items():
        leaked = [s[:10] + "..." for s in secrets_ if s in log]
        assert not leaked, f"secrets in the {name} log: {leaked}"

