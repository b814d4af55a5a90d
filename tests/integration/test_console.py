"""`broker console` in a real browser: headless Chromium (Debian's, driven by
Playwright) against a real console process and a real broker process.

Screenshots of the main pages go to $BROKER_CONSOLE_SCREENSHOTS when set (`make
console-screenshots` sets docs/console), else to the test's temporary directory."""

from __future__ import annotations

import csv
import io
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.public import PrivateKey
from playwright.sync_api import expect, sync_playwright

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import statement_service_pb2 as st_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common import sealing

from .broker_process import ROOT, free_port
from .conftest import Harness, rid
from .spend_helpers import (
    broker_harness,
    charge,
    policy,
    register_signing_worker,
    set_policy,
    spend_status,
    wait_until,
)
from .test_tls import TlsBroker, pki  # noqa: F401 - pki is a fixture

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1366, "height": 820}
HTML_NAME = '<img src=x onerror="window.__pwned=1">Research <b>agent</b>'
HTML_LABELS = {"job": "<script>window.__pwned=2</script>nightly",
               "team": '<img src=x onerror="window.__pwned=3"><i>ml</i>'}


def credits(micro: int) -> str:
    """As the page shows an amount: credits with six decimals, thousands grouped."""
    return f"{micro // 1_000_000:,}.{micro % 1_000_000:06d}"


class ConsoleProcess:
    def __init__(self, broker_target: str, log_path: Path, *extra_args: str,
                 ca: Path | None = None):
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}/"
        self.broker_target, self.log_path, self.extra_args = broker_target, log_path, extra_args
        self.ssl = ssl.create_default_context(cafile=str(ca)) if ca else None

    def start(self) -> ConsoleProcess:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "console", "--broker", self.broker_target,
             "--listen", f"127.0.0.1:{self.port}", *self.extra_args],
            cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(self.url, timeout=1, context=self.ssl) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log_file.close()


@dataclass
class World:
    h: Harness
    console: ConsoleProcess
    browser: object
    shots: Path
    worker_id: str
    usage_key: object

    @property
    def url(self) -> str:
        return self.console.url


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    directory = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("BROKER_CONSOLE_SCREENSHOTS") or directory / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with broker_harness(directory) as h:
        console = ConsoleProcess(h.target, directory / "console.log").start()
        worker_id, usage_key = register_signing_worker(h)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    yield World(h, console, browser, shots, worker_id, usage_key)
                finally:
                    browser.close()
        finally:
            console.stop()
        log = console.log()
        for secret in (h.creds["owner_api_key"], h.creds["agent_api_key"]):
            assert secret not in log, "an API key reached the console's log"


@pytest.fixture
def page(world):
    context = world.browser.new_context(viewport=LAPTOP, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # A CSP violation or a script error is logged as a console error; a refused API
    # call is logged as "Failed to load resource" and is expected in some tests.
    page.on("console", lambda m: m.type == "error" and not m.text.startswith(
        "Failed to load resource") and problems.append(m.text))
    yield page
    pwned = page.evaluate("() => window.__pwned")
    context.close()
    assert pwned is None, "text from the broker ran as script"
    assert not problems, problems


def sign_in(page, world: World, key: str, *, expect_ok: bool = True) -> None:
    page.goto(world.url)
    page.locator("#api-key").fill(key)
    page.locator("#api-key").press("Enter")  # the keyboard signs in
    if expect_ok:
        expect(page.locator("#nav")).to_be_visible()
        expect(page.locator("#page h2")).to_have_text("Overview")


def go(page, name: str, heading: str) -> None:
    page.locator(f'#nav a[href="#{name}"]').click()
    expect(page.locator("#page h2").first).to_have_text(heading)


def shot(page, world: World, name: str) -> None:
    path = world.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def agent_job(world: World, amount: int, gpu_ms: int, labels=None) -> res_pb.Receipt:
    """The demo agent authorizes; a (test) worker redeems, meters gpu_ms and settles.
    The owner's copy of the receipt."""
    auth = world.h.agent.auths.Authorize(_authorize(amount, labels)).authorization
    settle(world, auth.voucher, gpu_ms)
    return world.h.owner.receipt(auth.authorization_id)


def settle(world: World, voucher: str, gpu_ms: int) -> res_pb.Receipt:
    # Playwright's sync API keeps an event loop on this thread: meter on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(charge, world.h, world.worker_id, voucher, gpu_ms,
                           world.usage_key).result(60)


def _authorize(amount: int, labels=None):
    return auth_pb.AuthorizeRequest(request_id=rid(), amount=amount, ttl_seconds=300,
                                    scope=res_pb.Scope(model="tiny-lm"), labels=labels or {})


def keygen(path: Path) -> PrivateKey:
    made = subprocess.run([sys.executable, "-m", "broker.cli", "receipts", "keygen", "--out",
                           str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return sealing.load_private_key(path.read_text())


# -- the tests ----------------------------------------------------------------------------


def test_sign_in_shows_the_treasury_and_demo_wallet_as_the_ledger_has_them(world, page):
    h = world.h
    agent_job(world, 400_000, 1_500)  # something spent today
    sign_in(page, world, h.creds["owner_api_key"])
    wallet = h.owner.wallets.GetWallet(wallet_pb.GetWalletRequest(wallet_id=h.wallet_id)).wallet
    status = spend_status(h, h.owner, h.wallet_id)
    assert status.spent_today > 0
    row = page.locator(f'tr[data-wallet-id="{h.wallet_id}"]')
    expected = {"cap": wallet.cap, "refill_target": wallet.refill_target,
                "posted": wallet.balance.posted, "pending": wallet.balance.pending,
                "available": wallet.balance.available}
    for field, micro in expected.items():
        expect(row.locator(f'[data-field="{field}"]')).to_have_text(credits(micro))
    expect(row.locator('[data-field="spent_today"]')).to_have_text(
        f"{credits(status.spent_today)} of no limit")
    expect(row.locator('[data-field="spent_this_month"]')).to_contain_text(
        credits(status.spent_this_month))
    expect(row.locator('[data-field="state"]')).to_have_text("Active")
    treasury = h.treasury()
    for field in ("posted", "pending", "available"):
        expect(page.locator(f'#treasury [data-field="{field}"]')).to_have_text(
            credits(getattr(treasury, field)))
    shot(page, world, "overview")

    # The key is nowhere the page (or another script) could read it again.
    key = h.creds["owner_api_key"]
    assert key not in page.url
    stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, "
                           "document.cookie, document.body.innerHTML])")
    assert key not in stored and "console_session" not in stored
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "console_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    answer = page.request.get(world.url)
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp


def test_bad_keys_are_refused_with_a_clear_message(world, page):
    h = world.h
    admin = h.admin.admin
    revoked = admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=h.owner_id))
    admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(), key_id=revoked.key_id))
    for key, message in (("cbk_" + "x" * 43, "This API key is not valid."),
                         (revoked.api_key, "This API key was revoked."),
                         (h.creds["agent_api_key"], "The console is for owner and auditor keys"),
                         (h.creds["worker_api_key"], "The console is for owner and auditor keys"),
                         # An admin key reads every tenant but is no one tenant's.
                         (h.creds["admin_api_key"], "The console is for owner and auditor keys")):
        sign_in(page, world, key, expect_ok=False)
        expect(page.locator("#flash")).to_contain_text(message)
        expect(page.locator("#sign-in")).to_be_visible()
        expect(page.locator("#nav")).to_be_hidden()
        assert not [c for c in page.context.cookies() if c["name"] == "console_session"]
    shot(page, world, "sign-in-refused")


def test_an_auditor_sees_the_wallets_and_cannot_change_anything(world, page):
    h = world.h
    auditor = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AUDITOR, owner_id=h.owner_id)).api_key
    sign_in(page, world, auditor)
    expect(page.locator("#who")).to_have_text(f"auditor of {h.owner_id}")
    expect(page.locator(f'tr[data-wallet-id="{h.wallet_id}"]')).to_be_visible()
    expect(page.locator('[data-action="freeze"]')).to_have_count(0)
    # Even a crafted request is refused by the broker: the console has no powers of its own.
    csrf = page.evaluate("() => fetch('/api/session').then(r => r.json()).then(s => s.csrf_token)")
    status = post(page, "/api/wallets/freeze", {"wallet_id": h.wallet_id}, csrf)
    assert status["status"] == 403 and status["body"]["reason"] == "ROLE_NOT_ALLOWED"
    assert not h.owner.wallets.GetWallet(
        wallet_pb.GetWalletRequest(wallet_id=h.wallet_id)).wallet.frozen


def test_an_approval_appears_live_and_approving_it_gives_the_waiting_agent_its_voucher(world,
                                                                                      page):
    h = world.h
    set_policy(h, h.owner, h.wallet_id, approvals=pol_pb.ApprovalRules(
        threshold=1_000_000, timeout_seconds=600))
    try:
        sign_in(page, world, h.creds["owner_api_key"])
        go(page, "approvals", "Approvals")
        expect(page.locator("#no-approvals")).to_be_visible()
        pending = h.agent.auths.Authorize(_authorize(2_500_000, HTML_LABELS)).authorization
        assert pending.state == auth_pb.AUTHORIZATION_STATE_PENDING_APPROVAL
        assert not pending.voucher
        # The agent waits for the decision on WatchAuthorization.
        watch = policy(h, h.agent).WatchAuthorization(
            pol_pb.WatchAuthorizationRequest(authorization_id=pending.authorization_id),
            timeout=60)
        first = next(watch)
        assert first.approval.state == pol_pb.APPROVAL_STATE_PENDING

        row = page.locator(f'tr[data-authorization-id="{pending.authorization_id}"]')
        expect(row).to_be_visible(timeout=10_000)  # no reload: the live stream brought it
        expect(page.locator("#approvals-count")).to_have_text("1")
        expect(row.locator('[data-field="amount"]')).to_have_text(credits(2_500_000))
        # Labels with markup are shown as text, never as elements.
        expect(row).to_contain_text(HTML_LABELS["job"])
        expect(row).to_contain_text(HTML_LABELS["team"])
        assert row.locator("script, img, i, b").count() == 0
        shot(page, world, "approvals")

        row.locator("input").fill("fine: nightly eval")
        row.locator('[data-action="approve"]').focus()
        page.keyboard.press("Enter")  # the keyboard approves
        decided = [m for m in watch][-1]
        assert decided.approval.state == pol_pb.APPROVAL_STATE_APPROVED
        assert decided.approval.reason == "fine: nightly eval"
        assert decided.authorization.state == auth_pb.AUTHORIZATION_STATE_HELD
        assert decided.authorization.voucher.startswith("v1.")
        expect(row).to_have_count(0)
        expect(page.locator("#flash")).to_contain_text("Approved 2.500000 credits")
        settle(world, decided.authorization.voucher, 700)
    finally:
        policy(h, h.owner).SetSpendPolicy(pol_pb.SetSpendPolicyRequest(
            request_id=rid(), wallet_id=h.wallet_id, clear=True))


def test_a_sealed_receipt_opens_in_the_browser_with_the_key_file(world, page, tmp_path):
    h = world.h
    key_file, wrong_file = tmp_path / "owner-receipt.key", tmp_path / "other.key"
    key = keygen(key_file)
    keygen(wrong_file)
    sign_in(page, world, h.creds["owner_api_key"])
    go(page, "keys", "Keys")
    page.locator("#register-key-file").set_input_files(str(key_file))
    key_id = sealing.receipt_key_id(bytes(key.public_key))
    expect(page.locator("#receipt-key-id")).to_have_text(key_id)
    registered = h.owner.statements.GetReceiptKey(st_pb.GetReceiptKeyRequest()).receipt_key
    assert registered.key_id == key_id
    shot(page, world, "keys")

    receipt = agent_job(world, 300_000, 2_345, HTML_LABELS)
    assert receipt.receipt_key_id == key_id
    go(page, "receipts", "Receipts")
    page.locator(f'tr[data-receipt-id="{receipt.receipt_id}"] a').click()
    expect(page.locator("#page h2")).to_have_text(f"Receipt {receipt.receipt_id}")
    expect(page.locator('[data-field="charged"]')).to_have_text(credits(receipt.charged))

    page.locator("#receipt-key-file").set_input_files(str(wrong_file))
    expect(page.locator("#flash")).to_contain_text("does not open it")
    expect(page.locator("#opened dl")).to_have_count(0)
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    page.locator("#receipt-key-file").set_input_files(str(not_a_key))
    expect(page.locator("#flash")).to_contain_text("does not hold a receipt key")

    page.locator("#receipt-key-file").set_input_files(str(key_file))
    opened = page.locator("#opened")
    expect(opened).to_contain_text("broker signature verified")
    expect(opened.locator('[data-key="receipt_id"] > dd')).to_have_text(receipt.receipt_id)
    expect(opened.locator('[data-key="gpu_ms"] > dd').first).to_have_text("2345")
    expect(opened.locator('[data-key="job"] > dd')).to_have_text(HTML_LABELS["job"])
    expect(opened.locator('[data-key="team"] > dd')).to_have_text(HTML_LABELS["team"])
    assert opened.locator("script, img, i").count() == 0
    shot(page, world, "receipt")
    # The key never left the browser: the console's server saw no request carrying it.
    secret = bytes(key).hex()
    assert secret not in world.console.log()

    # A new pair made in the browser: the private key is saved as a file, only the
    # public key is registered.
    go(page, "keys", "Keys")
    with page.expect_download() as download:
        page.get_by_role("button", name="Make a new key pair and register it").click()
    made = sealing.load_private_key(Path(download.value.path()).read_text())
    new_id = sealing.receipt_key_id(bytes(made.public_key))
    expect(page.locator("#receipt-key-id")).to_have_text(new_id)
    registered = h.owner.statements.GetReceiptKey(st_pb.GetReceiptKeyRequest()).receipt_key
    assert registered.public_key == bytes(made.public_key)


def test_a_statement_downloads_as_csv_and_its_totals_match_the_receipts(world, page):
    h = world.h
    agent_job(world, 500_000, 3_210)
    sign_in(page, world, h.creds["owner_api_key"])
    go(page, "statements", "Statements")
    shot(page, world, "statements")
    with page.expect_download() as download:
        page.locator("#statement-download").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    wallets = [r for r in rows if r["kind"] == "wallet"]
    models = [r for r in rows if r["kind"] == "payment_model"]
    (total,) = [r for r in rows if r["kind"] == "range_total"]
    receipts = [r for w in h.owner.wallets.ListWallets(wallet_pb.ListWalletsRequest()).wallets
                for r in _receipts(h, w.wallet_id)]
    charged = sum(r.charged for r in receipts)
    assert charged > 0
    assert int(total["charged"]) == charged
    assert sum(int(r["charged"]) for r in wallets) == charged
    assert sum(int(r["charged"]) for r in models) == charged
    assert int(total["job_count"]) == len(receipts)
    assert int(total["released"]) == sum(r.released for r in receipts)
    assert {r["name"] for r in wallets} == {"demo agent wallet"}


def test_spend_chart_per_wallet_and_payment_model_by_hour_and_day(world, page):
    h = world.h
    agent_job(world, 200_000, 1_000)
    sign_in(page, world, h.creds["owner_api_key"])
    go(page, "spend", "Spend")
    chart = page.locator("svg.chart")
    expect(chart.locator("rect").first).to_be_visible()
    expect(page.locator(".legend")).to_contain_text("demo agent wallet")
    shot(page, world, "spend")
    page.get_by_role("button", name="Per payment model").click()
    expect(page.locator(".legend")).to_contain_text("metered_time")
    page.get_by_role("button", name="By day (30 days)").click()
    expect(page.locator('button[aria-pressed="true"]', has_text="By day")).to_be_visible()
    page.locator("details summary").click()
    today = page.locator("details tbody tr").last
    total = sum(r.charged for r in _receipts(h, h.wallet_id))
    expect(today.locator("td").last).to_have_text(credits(total))


def test_an_alert_appears_live_and_freeze_and_unfreeze_act_on_the_wallet(world, page):
    h = world.h
    t = h.new_tenant()
    set_policy(h, t.owner, alerts=pol_pb.AlertRules(denial_run=2))
    sign_in(page, world, t.owner.key)
    go(page, "alerts", "Alerts")
    expect(page.locator("#page tbody")).to_contain_text("No alerts.")
    for _ in range(2):
        try:
            t.agent.authorize(10**12)
        except Exception as error:  # INSUFFICIENT_FUNDS: a run of denials
            assert "INSUFFICIENT_FUNDS" in str(error) or "FAILED_PRECONDITION" in str(error)
    row = page.locator("#page tbody tr[data-alert-id]")
    expect(row).to_have_count(1, timeout=10_000)  # no reload
    expect(row).to_contain_text("denial run")
    expect(page.locator("#flash")).to_contain_text("New alert")
    row.locator('[data-action="freeze"]').click()
    wait_until(lambda: _wallet(h, t).frozen, what="the wallet frozen")
    expect(row.locator(".badge")).to_have_text("Frozen")
    shot(page, world, "alerts")
    row = page.locator("#page tbody tr[data-alert-id]")
    row.locator('[data-action="unfreeze"]').click()
    wait_until(lambda: not _wallet(h, t).frozen, what="the wallet unfrozen")


def test_forged_csrf_other_tenants_and_signed_out_requests_change_nothing(world, page):
    h = world.h
    other = h.new_tenant()
    other_auth = other.agent.authorize(100_000)
    sign_in(page, world, h.creds["owner_api_key"])
    csrf = page.evaluate("() => fetch('/api/session').then(r => r.json()).then(s => s.csrf_token)")
    forged = post(page, "/api/wallets/freeze", {"wallet_id": h.wallet_id}, "forged-token")
    assert forged["status"] == 403 and forged["body"]["reason"] == "CSRF_TOKEN_INVALID"
    missing = post(page, "/api/wallets/freeze", {"wallet_id": h.wallet_id}, None)
    assert missing["status"] == 403
    assert not _wallet(h, None).frozen
    # A cross-site form can only send form encodings: refused before anything else.
    form = page.evaluate("""(csrf) => fetch('/api/wallets/freeze', {method: 'POST',
        headers: {'Content-Type': 'text/plain', 'X-CSRF-Token': csrf},
        body: '{"wallet_id": "x"}'}).then(r => r.status)""", csrf)
    assert form == 415
    # Another tenant's wallet and receipt: the broker says they do not exist.
    theirs = post(page, "/api/wallets/freeze", {"wallet_id": other.wallet_id}, csrf)
    assert theirs["status"] == 404 and theirs["body"]["reason"] == "WALLET_NOT_FOUND"
    assert not _wallet(h, other).frozen
    receipt = page.request.get(f"{world.url}api/receipt?authorization_id="
                               f"{other_auth.authorization_id}")
    assert receipt.status == 404 and other.wallet_id not in receipt.text()
    page.goto(f"{world.url}#receipt/{other_auth.authorization_id}")
    expect(page.locator("#flash")).to_contain_text("not found")
    # Signed out, the session is gone on the server too.
    page.locator("#sign-out").click()
    expect(page.locator("#sign-in")).to_be_visible()
    gone = post(page, "/api/wallets/freeze", {"wallet_id": h.wallet_id}, csrf)
    assert gone["status"] == 401 and gone["body"]["reason"] == "SESSION_EXPIRED"
    assert page.request.get(f"{world.url}api/overview").status == 401


def test_names_with_markup_are_shown_as_text(world, page):
    h = world.h
    wallet = h.owner.wallets.CreateWallet(wallet_pb.CreateWalletRequest(
        request_id=rid(), display_name=HTML_NAME, cap=1_000_000)).wallet
    sign_in(page, world, h.creds["owner_api_key"])
    row = page.locator(f'tr[data-wallet-id="{wallet.wallet_id}"]')
    expect(row.locator(".name")).to_have_text(HTML_NAME)
    assert row.locator("img, b").count() == 0
    go(page, "spend", "Spend")  # the chart's legend and tooltips use names too
    page.evaluate("() => new Promise(r => setTimeout(r, 300))")


def test_a_key_revoked_after_sign_in_ends_the_session(world, page):
    h = world.h
    made = h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_OWNER, owner_id=h.owner_id))
    sign_in(page, world, made.api_key)
    h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(request_id=rid(),
                                                           key_id=made.key_id))
    go_to = page.locator('#nav a[href="#receipts"]')
    go_to.click()
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#flash")).to_contain_text("revoked")
    assert page.request.get(f"{world.url}api/overview").status == 401


def test_over_https_to_a_broker_that_requires_mtls(world, pki, tmp_path):  # noqa: F811
    broker = TlsBroker(tmp_path / "data", pki, mtls=True).start()
    console = ConsoleProcess(
        broker.target, tmp_path / "console.log", "--broker-ca", str(pki.ca),
        "--broker-client-cert", str(pki.agent[0]), "--broker-client-key", str(pki.agent[1]),
        "--tls-cert", str(pki.server[0]), "--tls-key", str(pki.server[1]), ca=pki.ca)
    try:
        console.start()
        context = world.browser.new_context(viewport=LAPTOP, ignore_https_errors=True)
        page = context.new_page()
        sign_in(page, World(None, console, None, world.shots, "", None),
                broker.credentials["owner_api_key"])
        expect(page.locator(f'tr[data-wallet-id="{broker.credentials["wallet_id"]}"]')
               ).to_be_visible()
        (cookie,) = [c for c in context.cookies() if c["name"] == "console_session"]
        assert cookie["secure"] and cookie["httpOnly"]
        assert "max-age" in page.request.get(console.url).headers["strict-transport-security"]
        context.close()
    finally:
        console.stop()
        broker.stop()


# -- helpers ------------------------------------------------------------------------------


def post(page, path: str, body: dict, csrf: str | None) -> dict:
    return page.evaluate("""([path, body, csrf]) => fetch(path, {method: 'POST',
        headers: Object.assign({'Content-Type': 'application/json'},
                               csrf === null ? {} : {'X-CSRF-Token': csrf}),
        body: JSON.stringify(body)}).then(async r => ({status: r.status, body: await r.json()}))
        """, [path, body, csrf])


def _wallet(h: Harness, tenant) -> wallet_pb.Wallet:
    client, wallet_id = (h.owner, h.wallet_id) if tenant is None else (tenant.owner,
                                                                       tenant.wallet_id)
    return client.wallets.GetWallet(wallet_pb.GetWalletRequest(wallet_id=wallet_id)).wallet


def _receipts(h: Harness, wallet_id: str) -> list:
    return list(h.owner.statements.ListReceipts(st_pb.ListReceiptsRequest(
        wallet_id=wallet_id, page_size=1000)).receipts)

