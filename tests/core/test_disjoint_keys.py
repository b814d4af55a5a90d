"""Operations of two unrelated owners share no key (append-only inserts aside).

The contract a store with several writers (PostgreSQL) relies on: if operation A (on
owner A's wallet) and operation B (on owner B's) never write the same key, and neither
reads a key the other writes, they can commit concurrently without waiting on each
other or being retried. The memory store records each operation's point reads,
scanned ranges, writes and inserts; random sequences of every kind of wallet operation
run for two owners (each with a treasury, a subscribed wallet whose grants get burned,
a spend policy with approvals, and a provider and workers of its own), and every
recorded operation of A is checked against every recorded operation of B:

- their writes are disjoint;
- neither reads (point read) a key the other writes;
- neither scans a range holding a key the other updates or deletes (inserting a fresh
  key into a scanned range is the append-only case and allowed).

Platform accounts are only appended to (`account_entries`), the journal is written
unsealed (`journal_unsealed`) and ids are time-ordered (Tx.next_id) rather than drawn
from counters: without those, every pair below would collide. docs/architecture.md
lists the keys one owner's operations do share (its treasury, its tenant policy...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core import (
    approvals,
    authorizations,
    journal,
    lease_settlement,
    leases,
    metering,
    policy,
    refunds,
    registry,
    subscriptions,
    tenancy,
    wallets,
)
from broker.core.access import Principal
from broker.store import MemoryStore
from broker.store.memory import Access
from common import vouchers

from .world import World

PRICES = {"gpu_second_price": 1000, "input_tokens_1k_price": 0,
          "output_tokens_1k_price": 2000, "call_price": 5}
LEASE_TERMS = {**PRICES, "reserved_hour_price": 180_000, "unused_reserved_bps": 2_500}
THRESHOLD = 50_000
ADMIN = Principal("key_admin", "admin")
KINDS = ("authorize", "approve", "deny", "redeem", "usage", "finish", "cancel",
         "expire_hold", "expire_session", "refund", "lease_start", "lease_end", "fund_wallet")


@dataclass
class Owner:
    owner: dict
    wallet: dict
    agent: Principal
    owner_p: Principal
    worker_p: Principal
    worker_id: str
    accesses: list[tuple[str, Access]] = field(default_factory=list)


class Pair:
    """Two unrelated owners on one store that records what each operation touches."""

    def __init__(self) -> None:
        self.w = World(store=MemoryStore(sealer=journal.seal, record_access=True))
        self.owners = [self._owner(name) for name in ("a", "b")]

    def _owner(self, name: str) -> Owner:
        w = self.w
        owner, wallet, agent, owner_p = w.tenant(treasury=50_000_000, cap=5_000_000,
                                                 refill_target=2_000_000, funded=2_000_000)
        w.run(lambda tx: policy.set_policy(tx, owner_p, "", {
            "approvals": {"threshold": THRESHOLD, "timeout_seconds": 3600}}, False, w.now))
        plan = w.run(lambda tx: subscriptions.create_plan(
            tx, owner["owner_id"], f"plan-{name}", 500_000, 86_400, 1, 0, w.now))
        w.run(lambda tx: subscriptions.subscribe(tx, owner["owner_id"], plan["plan_id"],
                                                 wallet["wallet_id"], w.now))
        provider = w.run(lambda tx: tenancy.create_provider(tx, f"prov-{name}", w.now))
        worker_p = Principal("key_worker_" + provider["provider_id"], "worker",
                             provider_id=provider["provider_id"])
        o = Owner(owner, wallet, agent, owner_p, worker_p, "")
        o.worker_id = self._worker(o)
        return o

    def _worker(self, o: Owner) -> str:
        return self.w.run(lambda tx: registry.register(
            tx, o.worker_p, "", "127.0.0.1:1", {"resource_class": "cpu", "models": ["m"]},
            LEASE_TERMS, self.w.now))["worker_id"]

    # -- preparations (not recorded) and the operations under test (recorded) --------------

    def recorded(self, o: Owner, kind: str, op):
        """Run `op`; with a `kind`, note what it touched as an operation under test."""
        result = self.w.run(op)
        if kind:
            o.accesses.append((kind, self.w.store.accesses[-1]))
        return result

    def authorize(self, o: Owner, amount: int = 20_000, ttl: int = 600, kind: str = ""):
        return self.recorded(o, kind, lambda tx: authorizations.authorize(
            tx, o.agent, amount, {"model": "m"}, ttl, self.w.now, self.w.config,
            self.w.signer.key_id))

    def redeem(self, o: Owner, auth: dict, kind: str = ""):
        claims = vouchers.verify(authorizations.voucher_token(auth, self.w.signer),
                                 self.w.verify_keys(), self.w.now)
        return self.recorded(o, kind, lambda tx: metering.redeem(
            tx, o.worker_p, claims, o.worker_id, "cpu", "m", self.w.now, self.w.config))

    def finish(self, o: Owner, ses: dict, kind: str = ""):
        return self.recorded(o, kind, lambda tx: metering.finish(
            tx, o.worker_p, ses["session_id"], {"gpu_ms": 1500, "output_tokens": 30, "calls": 1},
            self.w.now, self.w.config, self.w.signer))

    def run(self, o: Owner, kind: str, amount: int) -> None:
        w = self.w
        if kind == "authorize":
            self.authorize(o, amount, kind=kind)
        elif kind in ("approve", "deny"):
            auth = self.authorize(o, THRESHOLD + amount)
            assert auth["state"] == policy.PENDING_APPROVAL
            decide = approvals.approve if kind == "approve" else approvals.deny
            self.recorded(o, kind, lambda tx: decide(tx, o.owner_p, auth["authorization_id"],
                                                     "ok", w.now))
        elif kind == "redeem":
            self.redeem(o, self.authorize(o, amount), kind=kind)
        elif kind == "usage":
            ses = self.redeem(o, self.authorize(o, amount))
            self.recorded(o, kind, lambda tx: metering.record_usage(
                tx, o.worker_p, ses["session_id"], 1, {"gpu_ms": 500, "calls": 1}, w.now))
        elif kind == "finish":  # burns grant credits, pays out, takes the fee, refills
            self.finish(o, self.redeem(o, self.authorize(o, amount)), kind=kind)
        elif kind == "cancel":
            auth = self.authorize(o, amount)
            self.recorded(o, kind, lambda tx: authorizations.cancel(
                tx, o.agent, auth["authorization_id"], w.now))
        elif kind in ("expire_hold", "expire_session"):
            auth = self.authorize(o, amount, ttl=1)
            if kind == "expire_session":
                self.redeem(o, auth)
            self.recorded(o, kind, lambda tx: metering.expire_hold(
                tx, auth["hold_id"], w.now + 2_000, w.config, w.signer))
        elif kind == "refund":
            receipt = self.finish(o, self.redeem(o, self.authorize(o, amount)))
            self.recorded(o, kind, lambda tx: refunds.refund(
                tx, ADMIN, receipt["receipt_id"], 1 + receipt["charged"] // 2, "late", w.now,
                w.config, w.signer))
        elif kind in ("lease_start", "lease_end"):
            leased = self._worker(o)  # a lease takes its worker for itself
            lease = self.recorded(o, kind if kind == "lease_start" else "", lambda tx: (
                leases.create(tx, o.agent, leased, 600, "", {leased}, w.now)))
            if kind == "lease_end":
                self.recorded(o, kind, lambda tx: lease_settlement.settle(
                    tx, tx.get("leases", lease["lease_id"]), w.now + 600_000, w.config,
                    w.signer))
        elif kind == "fund_wallet":
            self.recorded(o, kind, lambda tx: wallets.fund_wallet(
                tx, o.owner["owner_id"], o.wallet["wallet_id"], amount, w.now))
        else:
            raise AssertionError(kind)


def _in_range(key: str, lo: str, hi: str | None) -> bool:
    return lo <= key and (hi is None or key < hi)


def conflicts(a: Access, b: Access) -> list[str]:
    """What `a` and `b` share (one direction for reads: what a reads that b writes)."""
    found = [f"both write {t}/{k}" for t, k in sorted(a.writes & b.writes)]
    found += [f"reads {t}/{k}, which the other writes" for t, k in sorted(a.reads & b.writes)]
    changed = b.writes - b.inserts
    found += [f"scans {t}[{lo!r}, {hi!r}), which holds {k}, which the other changes"
              for t, lo, hi in a.ranges for t2, k in sorted(changed)
              if t == t2 and _in_range(k, lo, hi)]
    return found


def check_pairs(pair: Pair) -> None:
    a, b = pair.owners
    problems = []
    for kind_a, access_a in a.accesses:
        for kind_b, access_b in b.accesses:
            for x, y, kx, ky in ((access_a, access_b, kind_a, kind_b),
                                 (access_b, access_a, kind_b, kind_a)):
                problems += [f"{kx} vs {ky}: {c}" for c in conflicts(x, y)]
    assert not problems, "\n".join(sorted(set(problems))[:40])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(KINDS),
                                st.integers(1, 40_000)), min_size=2, max_size=12))
def test_random_operations_of_two_owners_share_no_key(steps):
    pair = Pair()
    for index, kind, amount in steps:
        pair.run(pair.owners[index], kind, amount)
    check_pairs(pair)
    assert pair.w.violations() == []


def test_every_kind_against_every_kind():
    """Each kind once for each owner, so every pair of kinds is checked every run."""
    pair = Pair()
    for kind in KINDS:
        for o in pair.owners:
            pair.run(o, kind, 10_000)
    assert {k for k, _ in pair.owners[0].accesses} == set(KINDS)
    check_pairs(pair)
    assert pair.w.violations() == []


def test_the_check_sees_a_shared_key():
    """The check itself: a counter both owners' operations bump is caught."""
    pair = Pair()
    for o in pair.owners:
        pair.recorded(o, "counter", lambda tx: tx.put("meta", "counter", {
            "value": (tx.get("meta", "counter") or {"value": 0})["value"] + 1}))
    a, b = (o.accesses[0][1] for o in pair.owners)
    assert conflicts(a, b) == ["both write meta/counter",
                               "reads meta/counter, which the other writes"]
