"""Model-based test: random operations on the broker core against a simple model,
with every invariant of docs/design.md checked after each step. The wallet is subscribed to a
plan, so subscription grants are granted, reserved, burned and expired along the way."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from nacl.signing import SigningKey

from broker.core import (
    authorizations,
    grants,
    ledger,
    metering,
    periodic,
    registry,
    subscriptions,
    wallets,
)
from common import vouchers
from common.errors import BrokerError
from common.money import charge_for, split_fee
from tests.stores import model_store, snapshot

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 2_000,
          "output_tokens_1k_price": 5_000, "call_price": 7}
CAP, TARGET, TREASURY = 20_000, 10_000, 60_000
# The plan: GRANT credits every PERIOD_MS, valid for their period and one more.
GRANT, PERIOD_MS = 3_000, 10_000


class BrokerModel(RuleBasedStateMachine):
    auths = Bundle("auths")
    sessions = Bundle("sessions")

    store_kind = "memory"  # the subclasses at the end run it on LMDB and PostgreSQL

    def __init__(self):
        super().__init__()
        store, self.dispose = model_store(self.store_kind)
        self.w = World(store=store)
        self.owner, self.wallet, self.agent, self.owner_p = self.w.tenant(
            treasury=TREASURY, cap=CAP, refill_target=TARGET, funded=TARGET)
        self.provider, self.worker_p = self.w.provider()
        self.worker = self.w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, self.w.now))
        # The model: what the balances must be.
        self.posted, self.treasury = TARGET, TREASURY - TARGET
        self.held: dict[str, int] = {}  # authorization id -> amount still held
        self.charged: dict[str, int] = {}  # authorization id -> charged at settlement
        self.payout = self.fees = 0
        self.frozen = False
        self.tokens: dict[str, str] = {}
        self.redeemed: set[str] = set()
        # Key rotation: every signer ever active still verifies its own vouchers.
        self.signers = {self.w.signer.key_id: self.w.signer}
        # Grants by period: amount, remaining, reserved, expiry, expired?; and per
        # authorization the (period, part) it reserved, in burn order.
        self.grants: dict[int, dict] = {}
        self.parts: dict[str, list[tuple[int, int]]] = {}
        self.start = self.w.now
        plan = self.w.run(lambda tx: subscriptions.create_plan(
            tx, self.owner["owner_id"], "plan", GRANT, PERIOD_MS // 1000, 1, 0, self.w.now))
        self.w.run(lambda tx: subscriptions.subscribe(
            tx, self.owner["owner_id"], plan["plan_id"], self.wallet["wallet_id"], self.w.now))
        self.grant_in_model(0)

    def teardown(self):
        self.dispose()

    # -- helpers ------------------------------------------------------------------------

    def attempt(self, op):
        """Run op; on a BrokerError assert the store is unchanged and return None."""
        before = snapshot(self.w.store)
        try:
            return self.w.run(op)
        except BrokerError:
            assert snapshot(self.w.store) == before, "a rejected operation changed state"
            return None

    def credits(self) -> int:
        return sum(g["remaining"] for g in self.grants.values())

    def grant_in_model(self, period: int) -> None:
        amount = min(GRANT, self.treasury)
        self.treasury -= amount
        self.posted += amount
        self.grants[period] = {"amount": amount, "remaining": amount, "reserved": 0,
                               "expire_ms": self.start + (period + 2) * PERIOD_MS,
                               "expired": amount == 0}

    def reserve_in_model(self, auth_id: str, amount: int) -> None:
        parts = []
        for period in sorted(p for p, g in self.grants.items() if not g["expired"]):
            g = self.grants[period]
            take = min(g["remaining"] - g["reserved"], amount)
            if take > 0:
                g["reserved"] += take
                parts.append((period, take))
                amount -= take
        self.parts[auth_id] = parts

    def resolve_in_model(self, auth_id: str, posted: int) -> None:
        """The hold resolved with `posted` spent: burn its reservation in order; freed
        credits of expired grants go back to the treasury."""
        for period, part in self.parts.pop(auth_id):
            g = self.grants[period]
            burned = min(posted, part)
            posted -= burned
            g["reserved"] -= part
            g["remaining"] -= burned
            if g["expired"]:
                g["remaining"] -= part - burned
                self.posted -= part - burned
                self.treasury += part - burned

    def settle_in_model(self, auth_id: str, charged: int) -> None:
        held = self.held.pop(auth_id)
        assert 0 <= charged <= held
        self.charged[auth_id] = charged
        self.posted -= charged
        self.resolve_in_model(auth_id, charged)
        payout, fee = split_fee(charged, self.w.config.fee_bps)
        self.payout += payout
        self.fees += fee
        self.refill_in_model()

    def refill_in_model(self) -> None:
        if self.frozen:
            return
        # Back up to the target from the posted balance: open holds are not spent.
        amount = min(TARGET - self.posted, self.treasury)
        if amount > 0:
            self.posted += amount
            self.treasury -= amount

    # -- rules --------------------------------------------------------------------------

    @rule(target=auths, amount=st.integers(1, 4_000) | st.integers(-5, 15_000),
          ttl=st.integers(1, 30))
    def authorize(self, amount, ttl):
        result = self.attempt(lambda tx: authorizations.authorize(
            tx, self.agent, amount, {"model": "m"}, ttl, self.w.now, self.w.config,
            self.w.signer.key_id))
        available = self.posted - sum(self.held.values())
        if result is None:
            assert amount <= 0 or amount > available or self.frozen
            return None
        assert 0 < amount <= available and not self.frozen
        self.held[result["authorization_id"]] = amount
        self.reserve_in_model(result["authorization_id"], amount)
        signer = self.signers[result["voucher_key_id"]]
        self.tokens[result["authorization_id"]] = authorizations.voucher_token(result, signer)
        assert self.tokens[result["authorization_id"]].split(".")[1] == self.w.signer.key_id
        return result["authorization_id"]

    @rule(auth_id=auths)
    def cancel(self, auth_id):
        if auth_id is None:
            return
        ok = self.attempt(lambda tx: authorizations.cancel(tx, self.agent, auth_id, self.w.now))
        if ok is not None:
            assert auth_id in self.held and auth_id not in self.redeemed
            self.held.pop(auth_id)
            self.charged[auth_id] = 0
            self.resolve_in_model(auth_id, 0)

    @rule(target=sessions, auth_id=auths)
    def redeem(self, auth_id):
        if auth_id is None:
            return None
        try:
            keys = {kid: s.signing_key.verify_key for kid, s in self.signers.items()}
            claims = vouchers.verify(self.tokens[auth_id], keys, self.w.now)
        except BrokerError as error:
            assert error.reason == "VOUCHER_EXPIRED"
            return None
        opened = self.attempt(lambda tx: metering.redeem(
            tx, self.worker_p, claims, self.worker["worker_id"], "cpu", "m", self.w.now,
            self.w.config))
        if opened is None:
            assert auth_id in self.redeemed or auth_id not in self.held
            return None
        assert auth_id not in self.redeemed, "a voucher was redeemed twice"
        self.redeemed.add(auth_id)
        return (auth_id, opened["session_id"])

    @rule(ses=sessions, gpu_ms=st.integers(0, 3_000), tokens=st.integers(0, 500),
          calls=st.integers(0, 2))
    def report_usage(self, ses, gpu_ms, tokens, calls):
        if ses is None:
            return
        auth_id, session_id = ses
        current = self.w.read(lambda tx: tx.get("sessions", session_id))
        usage = {k: current["usage"][k] + d for k, d in
                 (("gpu_ms", gpu_ms), ("input_tokens", tokens), ("output_tokens", tokens),
                  ("calls", calls), ("energy_mj", 0))}
        decision = self.attempt(lambda tx: metering.record_usage(
            tx, self.worker_p, session_id, current["last_seq"] + 1, usage, self.w.now))
        if decision is None:
            assert current["state"] == "settled" or current["stop_reason"]
            return
        assert decision.charged == min(charge_for(usage, PRICES), self.held[auth_id])
        assert decision.charged + decision.remaining == self.held[auth_id]

    @rule(ses=consumes(sessions), extra=st.integers(0, 2_000))
    def finish(self, ses, extra):
        if ses is None:
            return
        auth_id, session_id = ses
        current = self.w.read(lambda tx: tx.get("sessions", session_id))
        usage = {**current["usage"], "gpu_ms": current["usage"]["gpu_ms"] + extra}
        receipt = self.attempt(lambda tx: metering.finish(
            tx, self.worker_p, session_id, usage, self.w.now, self.w.config, self.w.signer))
        if receipt is None:
            assert current["state"] == "settled"
            return
        expected = min(charge_for(usage, PRICES), self.held[auth_id])
        assert receipt["charged"] == expected and receipt["outcome"] in ("FINISHED", "STOPPED")
        self.settle_in_model(auth_id, expected)

    @rule(dt=st.integers(1, 8_000))
    def advance_time_and_expire(self, dt):
        self.w.now += dt
        # The broker's sweep order: periodic work (grants, then their expiry), then holds.
        self.w.run(lambda tx: periodic.run_due(tx, self.w.now, self.w.config, self.w.signer))
        while self.start + len(self.grants) * PERIOD_MS <= self.w.now:
            self.grant_in_model(len(self.grants))
        for g in self.grants.values():
            if not g["expired"] and g["expire_ms"] <= self.w.now:
                g["expired"] = True
                back = g["remaining"] - g["reserved"]
                g["remaining"] -= back
                self.posted -= back
                self.treasury += back
        due = {a for a in self.held
               if self.w.read(lambda tx, a=a: tx.get("authorizations", a))["expire_ms"]
               <= self.w.now}
        acked = {a: self.w.read(lambda tx, a=a: tx.get("authorizations", a)) for a in due}
        self.w.run(lambda tx: metering.expire_due(tx, self.w.now, self.w.config, self.w.signer))
        for auth_id in sorted(due, key=lambda a: acked[a]["expire_ms"]):
            if acked[auth_id]["state"] == "redeemed":
                ses = self.w.read(lambda tx, a=acked[auth_id]: tx.get("sessions", a["session_id"]))
                # Settled on the last acknowledged usage only.
                assert ses["charged"] == self.w.read(lambda tx, a=auth_id: tx.get(
                    "authorizations", a))["charged"]
                self.settle_in_model(auth_id, ses["charged"])
            else:
                self.held.pop(auth_id)
                self.charged[auth_id] = 0
                self.resolve_in_model(auth_id, 0)

    @rule(amount=st.integers(-10, 30_000))
    def fund_wallet(self, amount):
        ok = self.attempt(lambda tx: wallets.fund_wallet(
            tx, self.owner["owner_id"], self.wallet["wallet_id"], amount, self.w.now))
        if ok is None:
            # The cap limits purchased funds: grant credits come on top of it.
            assert amount <= 0 or amount > self.treasury or \
                self.posted - self.credits() + amount > CAP
            return
        self.posted += amount
        self.treasury -= amount

    @rule(seed=st.binary(min_size=32, max_size=32))
    def rotate_signing_key(self, seed):
        """A new active key; vouchers issued under older keys stay redeemable."""
        signer = vouchers.Signer(f"k{len(self.signers)}", SigningKey(seed))
        self.signers[signer.key_id] = signer
        self.w.signer = signer

    @rule()
    def roll_up(self):
        """The sweep folds the platform accounts' entries into their rows: no balance
        changes (the invariants below see rows and entries alike)."""
        before = {a: self.w.balance(a) for a in (ledger.ESCROW_ACCOUNT, ledger.FEE_ACCOUNT,
                                                 ledger.FUNDING_ACCOUNT)}
        self.w.run(ledger.roll_up)
        assert self.w.read(lambda tx: list(tx.scan("account_entries"))) == []
        assert {a: self.w.balance(a) for a in before} == before

    @rule(frozen=st.booleans())
    def freeze(self, frozen):
        self.w.run(lambda tx: wallets.set_frozen(tx, self.owner["owner_id"],
                                                 self.wallet["wallet_id"], frozen, self.w.now))
        self.frozen = frozen

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def ledger_invariants_hold(self):
        assert self.w.violations() == []

    @invariant()
    def grants_match_the_model(self):
        assert self.w.read(grants.check) == []
        found = self.w.read(lambda tx: subscriptions.list_grants(
            tx, self.owner_p, self.wallet["wallet_id"], 1000, ""))["grants"]
        assert {g["period"]: (g["amount"], g["remaining"], g["reserved"],
                              g["state"] == "expired") for g in found} == {
            p: (g["amount"], g["remaining"], g["reserved"], g["expired"])
            for p, g in self.grants.items()}

    @invariant()
    def balances_match_the_model(self):
        held = sum(self.held.values())
        credits = {"credits": self.credits()} if self.credits() else {}
        assert self.w.balance(self.wallet["wallet_id"]) == {
            "posted": self.posted, "pending": held, "available": self.posted - held, **credits}
        assert self.w.balance(self.owner["treasury_account_id"])["posted"] == self.treasury
        assert self.w.balance(self.provider["payout_account_id"])["posted"] == self.payout
        assert self.w.balance(ledger.FEE_ACCOUNT)["posted"] == self.fees
        assert self.w.balance(ledger.ESCROW_ACCOUNT)["posted"] == 0


BrokerModel.TestCase.settings = settings(max_examples=80, stateful_step_count=50,
                                         deadline=None)
TestBrokerModel = BrokerModel.TestCase


# The same machine on the durable stores: fewer, shorter runs (each step reads every
# table back for the invariants), enough to show they behave as the memory store does.
class LmdbBrokerModel(BrokerModel):
    store_kind = "lmdb"


class PgBrokerModel(BrokerModel):
    store_kind = "postgresql"


for _model in (LmdbBrokerModel, PgBrokerModel):
    _model.TestCase.settings = settings(max_examples=6, stateful_step_count=25,
                                        deadline=None)
TestLmdbBrokerModel = LmdbBrokerModel.TestCase
TestPgBrokerModel = PgBrokerModel.TestCase
