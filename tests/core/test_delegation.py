"""Delegation in the core: owners' agent keys, sub-budgets (no child wider than its
parent, holds counted at every level, revocation down the tree), and a property test
that no sequence of operations across a tree overdraws any level."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from broker.core import (
    agent_keys,
    authorizations,
    budgets,
    delegation,
    killswitch,
    metering,
    policy,
    receipts,
    refunds,
    registry,
    statements,
    wallets,
)
from broker.core.access import Principal
from common import vouchers
from common.errors import BrokerError

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0, "output_tokens_1k_price": 0,
          "call_price": 0}  # 1 micro-credit per GPU-millisecond: the charge is gpu_ms


def agent_of(result: dict, owner_id: str) -> Principal:
    return Principal(result["key_id"], "agent", owner_id, result["wallet"]["wallet_id"])


def sub(w: World, principal: Principal, parent: str, cap: int, **kw):
    return w.run(lambda tx: delegation.create(
        tx, principal, parent, kw.pop("name", "child"), cap, kw.pop("expire_ms", 0),
        kw.pop("scope", {}), kw.pop("policy", None), "", w.now, w.config))


def refused(w: World, op) -> BrokerError:
    before = w.store.snapshot()
    with pytest.raises(BrokerError) as info:
        w.run(op)
    assert w.store.snapshot() == before, "a refused operation changed state"
    return info.value


def authorize(w: World, principal: Principal, amount: int, scope: dict | None = None):
    return w.run(lambda tx: authorizations.authorize(
        tx, principal, amount, scope or {"model": "m"}, 60, w.now, w.config, w.signer.key_id))


# -- owners manage their agents' keys ----------------------------------------------------


def test_owner_creates_lists_and_revokes_agent_keys_of_its_own_tenant_only():
    w = World()
    owner, wallet, _, owner_p = w.tenant()
    other, other_wallet, _, other_p = w.tenant()
    made = w.run(lambda tx: agent_keys.create(tx, owner_p, wallet["wallet_id"], "bot", w.now))
    assert made["api_key"].startswith("cbk_")
    listed = w.read(lambda tx: agent_keys.list_keys(tx, owner_p, "", 0, ""))["keys"]
    assert [k["key_id"] for k in listed] == [made["key_id"]]
    assert w.read(lambda tx: agent_keys.list_keys(tx, other_p, "", 0, ""))["keys"] == []
    # Another tenant's wallet or key: NOT_FOUND, nothing created or revoked.
    error = refused(w, lambda tx: agent_keys.create(tx, other_p, wallet["wallet_id"], "", w.now))
    assert error.reason == "WALLET_NOT_FOUND"
    error = refused(w, lambda tx: agent_keys.revoke(tx, other_p, made["key_id"], w.now))
    assert error.reason == "API_KEY_NOT_FOUND"
    revoked = w.run(lambda tx: agent_keys.revoke(tx, owner_p, made["key_id"], w.now))
    assert revoked["revoked"] is True
    error = refused(w, lambda tx: agent_keys.revoke(tx, owner_p, made["key_id"], w.now))
    assert error.reason == "API_KEY_REVOKED"
    with pytest.raises(BrokerError) as info:  # another tenant's wallet: not found
        w.read(lambda tx: agent_keys.list_keys(tx, owner_p, other_wallet["wallet_id"], 0, ""))
    assert info.value.reason == "WALLET_NOT_FOUND"


def test_listing_agent_keys_pages_and_filters_by_wallet():
    w = World()
    owner, wallet, _, owner_p = w.tenant()
    second = w.run(lambda tx: wallets.create_wallet(tx, owner["owner_id"], "w2", 1000, 0, w.now,
                                                    w.config))
    ids = [w.run(lambda tx, i=i: agent_keys.create(
        tx, owner_p, wallet["wallet_id"] if i % 2 else second["wallet_id"], f"k{i}", w.now))
        ["key_id"] for i in range(5)]
    seen, token = [], ""
    while True:
        page = w.read(lambda tx, t=token: agent_keys.list_keys(tx, owner_p, "", 2, t))
        seen += [k["key_id"] for k in page["keys"]]
        token = page["next_page_token"]
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    only = w.read(lambda tx: agent_keys.list_keys(tx, owner_p, second["wallet_id"], 0, ""))
    assert {k["wallet_id"] for k in only["keys"]} == {second["wallet_id"]}
    assert len(only["keys"]) == 3


# -- sub-budgets ------------------------------------------------------------------------


def test_a_hold_on_a_child_counts_against_every_level():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    a = sub(w, agent, "", 20_000)
    a_agent = agent_of(a, owner["owner_id"])
    b = sub(w, a_agent, "", 8_000)
    b_agent = agent_of(b, owner["owner_id"])
    auth = authorize(w, b_agent, 5_000)
    levels = {lv["wallet_id"]: lv for lv in w.read(
        lambda tx: budgets.chain(tx, b["wallet"]["wallet_id"]))}
    assert levels[b["wallet"]["wallet_id"]]["held"] == 5_000
    assert levels[a["wallet"]["wallet_id"]]["held"] == 5_000
    assert w.balance(root["wallet_id"])["pending"] == 5_000  # the root's money
    # The child has 3,000 left, its parent 15,000: the child is the limit.
    error = refused(w, lambda tx: authorizations.authorize(
        tx, b_agent, 3_001, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "SUB_BUDGET_EXCEEDED"
    assert error.metadata["wallet"] == b["wallet"]["wallet_id"]
    # The parent spends its own allowance too: 15,000 left, minus what its child holds.
    error = refused(w, lambda tx: authorizations.authorize(
        tx, a_agent, 15_001, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "SUB_BUDGET_EXCEEDED"
    authorize(w, a_agent, 15_000)
    # Cancelling frees every level.
    w.run(lambda tx: authorizations.cancel(tx, b_agent, auth["authorization_id"], w.now))
    assert w.read(lambda tx: budgets.get(tx, b["wallet"]["wallet_id"]))["held"] == 0
    assert w.read(lambda tx: budgets.get(tx, a["wallet"]["wallet_id"]))["held"] == 15_000
    assert w.violations() == []


def test_a_child_is_never_wider_than_its_parent():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    a = sub(w, agent, "", 10_000, scope={"models": ["m", "n"],
                                        "max_prices": {"gpu_second_price": 500}})
    a_agent = agent_of(a, owner["owner_id"])
    cases = [
        (dict(cap=10_001), "SUB_BUDGET_CAP_ABOVE_ALLOWANCE"),
        (dict(cap=100, scope={"models": ["x"]}), "SUB_BUDGET_WIDER_THAN_PARENT"),
        (dict(cap=100, scope={"max_prices": {"gpu_second_price": 501}}),
         "SUB_BUDGET_WIDER_THAN_PARENT"),
        (dict(cap=100, expire_ms=a["sub_budget"]["expire_ms"] + 1),
         "SUB_BUDGET_WIDER_THAN_PARENT"),
        (dict(cap=100, expire_ms=w.now - 1), "INVALID_ARGUMENT"),
        (dict(cap=0), "INVALID_AMOUNT"),
    ]
    for kw, reason in cases:
        error = refused(w, lambda tx, kw=kw: delegation.create(
            tx, a_agent, "", "c", kw.get("cap"), kw.get("expire_ms", 0), kw.get("scope", {}),
            None, "", w.now, w.config))
        assert error.reason == reason, (kw, error)
    # An empty scope inherits the parent's; a narrower one is kept.
    child = sub(w, a_agent, "", 100, scope={"models": ["n"]})
    assert child["sub_budget"]["scope"]["models"] == ["n"]
    assert child["sub_budget"]["scope"]["max_prices"]["gpu_second_price"] == 500
    inherit = sub(w, a_agent, "", 100)
    assert inherit["sub_budget"]["scope"]["models"] == ["m", "n"]


def test_a_child_policy_is_no_looser_and_is_inherited_by_default():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    w.run(lambda tx: policy.set_policy(tx, owner_p, root["wallet_id"], {
        "max_per_authorization": 1_000, "limits": {"daily": 5_000}}, False, w.now))
    error = refused(w, lambda tx: delegation.create(
        tx, agent, "", "c", 100, 0, {}, {"max_per_authorization": 2_000, "limits":
                                        {"daily": 5_000}}, "", w.now, w.config))
    assert error.reason == "SUB_BUDGET_WIDER_THAN_PARENT"
    assert error.metadata["field"] == "policy.max_per_authorization"
    error = refused(w, lambda tx: delegation.create(
        tx, agent, "", "c", 100, 0, {}, {"max_per_authorization": 500}, "", w.now, w.config))
    assert error.metadata["field"] == "policy.limits.daily"  # 0: no limit, looser
    child = sub(w, agent, "", 3_000)
    c_agent = agent_of(child, owner["owner_id"])
    error = refused(w, lambda tx: authorizations.authorize(
        tx, c_agent, 1_001, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "POLICY_AMOUNT_ABOVE_MAX"


def test_scope_of_a_sub_budget_is_enforced_at_authorization():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    provider, worker_p = w.provider()
    worker_id = w.run(lambda tx: registry.register(
        tx, worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]}, PRICES,
        w.now))["worker_id"]
    child = sub(w, agent, "", 5_000, scope={"models": ["m"], "worker_ids": [worker_id],
                                           "max_prices": {"call_price": 3}})
    c_agent = agent_of(child, owner["owner_id"])
    for scope in ({"model": "x", "worker_id": worker_id}, {"model": "m"},
                  {"model": "m", "worker_id": "wrk_other"},
                  {"model": "m", "worker_id": worker_id, "max_prices": {"call_price": 4}}):
        error = refused(w, lambda tx, s=scope: authorizations.authorize(
            tx, c_agent, 10, s, 60, w.now, w.config, w.signer.key_id))
        assert error.reason == "SUB_BUDGET_SCOPE_NOT_ALLOWED", (scope, error)
    auth = authorize(w, c_agent, 10, {"model": "m", "worker_id": worker_id})
    assert auth["scope"]["max_prices"]["call_price"] == 3  # narrowed to the sub-budget's
    assert auth["expire_ms"] <= child["sub_budget"]["expire_ms"]


def test_a_sibling_budget_cannot_be_used_and_depth_is_bounded():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    a = sub(w, agent, "", 5_000)
    b = sub(w, agent, "", 5_000)
    a_agent = agent_of(a, owner["owner_id"])
    error = refused(w, lambda tx: delegation.create(
        tx, a_agent, b["wallet"]["wallet_id"], "c", 10, 0, {}, None, "", w.now, w.config))
    assert error.reason == "WALLET_NOT_FOUND"
    error = refused(w, lambda tx: delegation.revoke(tx, a_agent, b["wallet"]["wallet_id"],
                                                    w.now))
    assert error.reason == "SUB_BUDGET_NOT_FOUND"
    level = a_agent
    for _ in range(budgets.MAX_DEPTH - 1):
        level = agent_of(sub(w, level, "", 10), owner["owner_id"])
    error = refused(w, lambda tx: delegation.create(
        tx, level, "", "c", 1, 0, {}, None, "", w.now, w.config))
    assert error.reason == "SUB_BUDGET_TOO_DEEP"
    error = refused(w, lambda tx: wallets.fund_wallet(tx, owner["owner_id"],
                                                      a["wallet"]["wallet_id"], 10, w.now))
    assert error.reason == "SUB_BUDGET_NOT_FUNDABLE"


def test_revoking_or_freezing_a_parent_stops_every_descendant():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    a = sub(w, agent, "", 20_000)
    a_agent = agent_of(a, owner["owner_id"])
    b = sub(w, a_agent, "", 8_000)
    b_agent = agent_of(b, owner["owner_id"])
    auth = authorize(w, b_agent, 1_000)
    assert not w.read(lambda tx: killswitch.revoked(tx, auth))
    w.run(lambda tx: wallets.set_frozen(tx, owner["owner_id"], root["wallet_id"], True, w.now))
    assert w.read(lambda tx: killswitch.revoked(tx, auth))  # running sessions get STOP
    error = refused(w, lambda tx: authorizations.authorize(
        tx, b_agent, 10, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "WALLET_FROZEN"
    w.run(lambda tx: wallets.set_frozen(tx, owner["owner_id"], root["wallet_id"], False, w.now))
    w.run(lambda tx: delegation.revoke(tx, agent, a["wallet"]["wallet_id"], w.now))
    assert w.read(lambda tx: killswitch.revoked(tx, auth))
    error = refused(w, lambda tx: authorizations.authorize(
        tx, b_agent, 10, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "SUB_BUDGET_REVOKED"
    assert w.read(lambda tx: delegation.get(tx, owner_p, b["wallet"]["wallet_id"],
                                            w.now))["stopped"]


def test_an_expired_sub_budget_cannot_authorize():
    w = World()
    owner, root, agent, owner_p = w.tenant(funded=50_000, refill_target=0)
    child = sub(w, agent, "", 5_000, expire_ms=w.now + 10_000)
    c_agent = agent_of(child, owner["owner_id"])
    assert authorize(w, c_agent, 10)["expire_ms"] == w.now + 10_000  # clamped
    w.now += 10_000
    error = refused(w, lambda tx: authorizations.authorize(
        tx, c_agent, 10, {"model": "m"}, 60, w.now, w.config, w.signer.key_id))
    assert error.reason == "SUB_BUDGET_EXPIRED"


# -- the property: no level is ever overdrawn ------------------------------------------------


class TreeModel(RuleBasedStateMachine):
    """A root wallet and a three-level tree of sub-budgets under it; random
    authorizations, settlements, cancellations, refunds and expiries at any level."""

    auths = Bundle("auths")
    sessions = Bundle("sessions")
    receipts = Bundle("receipts")

    def __init__(self):
        super().__init__()
        self.w = World()
        self.owner, self.root, root_agent, self.owner_p = self.w.tenant(
            treasury=100_000, cap=30_000, refill_target=0, funded=30_000)
        oid = self.owner["owner_id"]
        a = sub(self.w, root_agent, "", 20_000)
        a1 = sub(self.w, agent_of(a, oid), "", 12_000)
        a11 = sub(self.w, agent_of(a1, oid), "", 9_000)
        b = sub(self.w, root_agent, "", 15_000)
        self.agents = [root_agent] + [agent_of(x, oid) for x in (a, a1, a11, b)]
        self.parent = {x["wallet"]["wallet_id"]: x["sub_budget"]["parent_wallet_id"]
                       for x in (a, a1, a11, b)}
        self.caps = {x["wallet"]["wallet_id"]: x["sub_budget"]["cap"] for x in (a, a1, a11, b)}
        self.provider, self.worker_p = self.w.provider()
        self.worker = self.w.run(lambda tx: registry.register(
            tx, self.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            PRICES, self.w.now))
        self.held: dict[str, tuple[str, int]] = {}  # authorization -> (wallet, amount)
        self.spent = dict.fromkeys(self.caps, 0)
        self.root_posted = 30_000
        self.receipts: dict[str, tuple[str, int]] = {}  # receipt -> (wallet, charged)
        self.since = self.w.now

    def levels(self, wallet_id: str) -> list[str]:
        out = []
        while wallet_id in self.parent:
            out.append(wallet_id)
            wallet_id = self.parent[wallet_id]
        return out

    def room(self, wallet_id: str) -> int:
        held = {w: 0 for w in self.caps}
        for owner_wallet, amount in self.held.values():
            for level in self.levels(owner_wallet):
                held[level] += amount
        root_available = self.root_posted - sum(a for _, a in self.held.values())
        return min([root_available, *(self.caps[lv] - held[lv] - self.spent[lv]
                                      for lv in self.levels(wallet_id))])

    def attempt(self, op):
        before = self.w.store.snapshot()
        try:
            return self.w.run(op)
        except BrokerError:
            assert self.w.store.snapshot() == before, "a refused operation changed state"
            return None

    @rule(target=auths, who=st.integers(0, 4), amount=st.integers(1, 12_000),
          ttl=st.integers(1, 20))
    def authorize(self, who, amount, ttl):
        principal = self.agents[who]
        room = self.room(principal.wallet_id)
        result = self.attempt(lambda tx: authorizations.authorize(
            tx, principal, amount, {"model": "m"}, ttl, self.w.now, self.w.config,
            self.w.signer.key_id))
        if result is None:
            assert amount > room
            return None
        assert amount <= room, "a level was allowed past its cap"
        self.held[result["authorization_id"]] = (principal.wallet_id, amount)
        return (who, result)

    @rule(auth=auths)
    def cancel(self, auth):
        if auth is None:
            return
        who, record = auth
        if self.attempt(lambda tx: authorizations.cancel(
                tx, self.agents[who], record["authorization_id"], self.w.now)) is not None:
            self.held.pop(record["authorization_id"])

    @rule(target=sessions, auth=auths)
    def redeem(self, auth):
        if auth is None:
            return None
        _, record = auth
        token = authorizations.voucher_token(record, self.w.signer)
        claims = vouchers.verify(token, self.w.verify_keys(), self.w.now, check_expiry=False)
        opened = self.attempt(lambda tx: metering.redeem(
            tx, self.worker_p, claims, self.worker["worker_id"], "cpu", "m", self.w.now,
            self.w.config))
        return None if opened is None else (record["authorization_id"], opened["session_id"])

    @rule(target=receipts, ses=consumes(sessions), gpu_ms=st.integers(0, 12_000))
    def finish(self, ses, gpu_ms):
        if ses is None:
            return None
        auth_id, session_id = ses
        usage = {"gpu_ms": gpu_ms, "input_tokens": 0, "output_tokens": 0, "calls": 0,
                 "energy_mj": 0}
        receipt = self.attempt(lambda tx: metering.finish(
            tx, self.worker_p, session_id, usage, self.w.now, self.w.config, self.w.signer))
        if receipt is None:
            return None
        self.receipts[receipt["receipt_id"]] = (self.held[auth_id][0], receipt["charged"])
        self.settled(auth_id, receipt["charged"])
        return (auth_id, receipt["receipt_id"], receipt["charged"])

    def settled(self, auth_id: str, charged: int) -> None:
        wallet_id, amount = self.held.pop(auth_id)
        assert charged <= amount
        for level in self.levels(wallet_id):
            self.spent[level] += charged
        self.root_posted -= charged

    @rule(rec=consumes(receipts), part=st.integers(1, 4))
    def refund(self, rec, part):
        if rec is None or rec[2] < part:
            return
        auth_id, receipt_id, charged = rec
        amount = charged // part
        auth = self.w.read(lambda tx: tx.get("authorizations", auth_id))
        done = self.attempt(lambda tx: refunds.refund(
            tx, self.owner_p, receipt_id, amount, "bad output", self.w.now, self.w.config,
            self.w.signer))
        assert done is not None
        for level in self.levels(auth["wallet_id"]):
            self.spent[level] -= amount
        self.root_posted += amount

    @rule(dt=st.integers(1, 15_000))
    def advance_time_and_expire(self, dt):
        self.w.now += dt
        due = [a for a in self.held if self.w.read(
            lambda tx, a=a: tx.get("authorizations", a))["expire_ms"] <= self.w.now]
        self.w.run(lambda tx: metering.expire_due(tx, self.w.now, self.w.config, self.w.signer))
        for auth_id in due:
            auth = self.w.read(lambda tx, a=auth_id: tx.get("authorizations", a))
            if auth["receipt_id"]:  # (redeemed: settled on its acknowledged usage)
                self.receipts[auth["receipt_id"]] = (auth["wallet_id"], auth["charged"])
            self.settled(auth_id, auth["charged"])

    @invariant()
    def no_level_is_overdrawn(self):
        assert self.w.violations() == []
        for wallet_id, cap in self.caps.items():
            level = self.w.read(lambda tx, w=wallet_id: budgets.get(tx, w))
            assert level["held"] + level["spent"] <= cap
            assert level["spent"] == self.spent[wallet_id]
        assert self.w.balance(self.root["wallet_id"])["available"] >= 0
        assert self.w.balance(self.root["wallet_id"])["posted"] == self.root_posted

    @invariant()
    def receipts_and_statements_roll_up(self):
        """Each level's key lists exactly its subtree's receipts, and the owner's
        statement subtotals each level's subtree: charged, released and job count."""
        root_id = self.root["wallet_id"]

        def subtree(wallet_id: str) -> set[str]:
            return {r for r, (w, _) in self.receipts.items()
                    if wallet_id in (root_id, w, *self.levels(w))}

        for agent in self.agents:
            listed = self.w.read(lambda tx, a=agent: receipts.list_receipts(
                tx, a, "", 1000, ""))["receipts"]
            assert {r["receipt_id"] for r in listed} == subtree(agent.wallet_id)
        start = self.since - self.since % receipts.DAY_MS
        found = self.w.read(lambda tx: statements.owner_statement(
            tx, self.owner_p, "", start, self.w.now + 1, 0, False, self.w.config,
            self.w.signer))
        lines = {line["wallet_id"]: line for line in found["wallets"]}
        for agent in self.agents:
            mine = subtree(agent.wallet_id)
            if not mine:
                assert agent.wallet_id not in lines
                continue
            line = lines[agent.wallet_id]
            charged = sum(self.receipts[r][1] for r in mine)
            assert (line["rollup_charged"], line["rollup_job_count"]) == (charged, len(mine))
            assert line["parent_wallet_id"] == self.parent.get(agent.wallet_id, "")
            assert line["depth"] == len(self.levels(agent.wallet_id))
            children = [c for c in lines.values() if c["parent_wallet_id"] == agent.wallet_id]
            for name in ("charged", "released", "job_count"):
                assert line[f"rollup_{name}"] == line[name] + sum(
                    c[f"rollup_{name}"] for c in children)
        assert found["total_charged"] == sum(c for _, c in self.receipts.values())
        assert set(lines) <= {a.wallet_id for a in self.agents}


TestTreeNeverOverdrawn = TreeModel.TestCase
TestTreeNeverOverdrawn.settings = settings(max_examples=40, stateful_step_count=30,
                                           deadline=None)
