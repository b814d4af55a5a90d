"""Delegation against a real broker: an owner manages its agents' keys, an agent creates
a sub-budget whose key authorizes and narrows a voucher offline; every bad input is
refused with its status and reason, and nothing held or spent."""

from __future__ import annotations

import csv
import io
import json
import random
import threading

import grpc
from nacl.signing import SigningKey, VerifyKey

from broker.client import narrow_voucher
from broker.console import views
from broker.console.broker_calls import ConsoleClient
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import delegation_service_pb2 as pb
from broker.v1 import delegation_service_pb2_grpc as pb_grpc
from broker.v1 import policy_service_pb2 as pol_pb
from broker.v1 import resources_pb2 as res_pb
from broker.v1 import statement_service_pb2 as st_pb
from broker.v1 import voucher_key_service_pb2 as keys_pb
from broker.v1 import wallet_service_pb2 as wallet_pb
from common import convert, mandates, vouchers
from common.clock import now_ms
from common.status import error_info

from .conftest import Client, _Bound, bearer, rid, rpc_error, unchanged
from .spend_helpers import charge, policy, register_signing_worker, set_policy

OK = grpc.StatusCode


def delegation(h, key: str):
    return _Bound(pb_grpc.DelegationServiceStub(h.channel), bearer(key))


def test_owner_agent_keys_and_a_sub_budget_end_to_end(h):
    owner = delegation(h, h.owner.key)
    made = owner.CreateAgentKey(pb.CreateAgentKeyRequest(request_id=rid(),
                                                         wallet_id=h.wallet_id,
                                                         description="planner"))
    listed = owner.ListAgentKeys(pb.ListAgentKeysRequest(wallet_id=h.wallet_id)).keys
    assert made.key_id in {k.key_id for k in listed}
    planner = Client(h.channel, made.api_key)
    assert planner.balance().available > 0
    # Another tenant sees none of it.
    other = h.new_tenant()
    with unchanged(h, OK.NOT_FOUND, "API_KEY_NOT_FOUND"):
        delegation(h, other.owner.key).RevokeAgentKey(pb.RevokeAgentKeyRequest(
            request_id=rid(), key_id=made.key_id))
    with unchanged(h, OK.NOT_FOUND, "WALLET_NOT_FOUND"):
        delegation(h, other.owner.key).CreateAgentKey(pb.CreateAgentKeyRequest(
            request_id=rid(), wallet_id=h.wallet_id))
    with rpc_error(OK.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"):
        delegation(h, h.agent.key).CreateAgentKey(pb.CreateAgentKeyRequest(
            request_id=rid(), wallet_id=h.wallet_id))

    # The planner hands a sub-agent a narrower budget.
    agent = delegation(h, made.api_key)
    available = planner.balance().available
    with unchanged(h, OK.FAILED_PRECONDITION, "SUB_BUDGET_CAP_ABOVE_ALLOWANCE"):
        agent.CreateSubBudget(pb.CreateSubBudgetRequest(request_id=rid(), display_name="sub",
                                                        cap=available + 1))
    child = agent.CreateSubBudget(pb.CreateSubBudgetRequest(
        request_id=rid(), display_name="sub-agent", cap=200_000,
        scope=pb.SubBudgetScope(models=["tiny-lm"],
                                max_prices=res_pb.PriceSheet(gpu_second_price=5_000))))
    assert child.sub_budget.root_wallet_id == h.wallet_id and child.sub_budget.depth == 1
    with unchanged(h, OK.PERMISSION_DENIED, "SUB_BUDGET_WIDER_THAN_PARENT"):
        delegation(h, child.api_key).CreateSubBudget(pb.CreateSubBudgetRequest(
            request_id=rid(), display_name="x", cap=10,
            scope=pb.SubBudgetScope(models=["other-model"])))
    sub_agent = Client(h.channel, child.api_key)
    with unchanged(h, OK.PERMISSION_DENIED, "SUB_BUDGET_SCOPE_NOT_ALLOWED"):
        sub_agent.authorize(1_000, scope=res_pb.Scope(model="other-model"))
    with unchanged(h, OK.FAILED_PRECONDITION, "SUB_BUDGET_EXCEEDED"):
        sub_agent.authorize(200_001, scope=res_pb.Scope(model="tiny-lm"))
    with unchanged(h, OK.NOT_FOUND, "WALLET_NOT_FOUND"):  # another wallet's money
        sub_agent.wallets.GetBalance(wallet_pb.GetBalanceRequest(wallet_id=h.wallet_id))

    holder = SigningKey.generate()
    auth = sub_agent.auths.Authorize(auth_pb.AuthorizeRequest(
        request_id=rid(), amount=50_000, scope=res_pb.Scope(model="tiny-lm"),
        holder_public_key=bytes(holder.verify_key))).authorization
    assert auth.scope.max_prices.gpu_second_price == 5_000  # narrowed to the sub-budget
    assert h.wallet().pending >= 50_000  # the root's money is held
    got = delegation(h, made.api_key).GetSubBudget(pb.GetSubBudgetRequest(
        wallet_id=child.wallet.wallet_id)).sub_budget
    assert got.held == 50_000
    derived = narrow_voucher(auth.voucher, holder, amount=10_000,
                             expire_ms=now_ms() + 60_000, scope={"model": "tiny-lm"})
    keys = {k.key_id: VerifyKey(k.public_key) for k in h.anon.keys.ListVoucherKeys(
        keys_pb.ListVoucherKeysRequest()).keys}
    claims = vouchers.verify(derived, keys, now_ms())
    assert claims.amount == 10_000 and claims.family_id == vouchers.verify(
        auth.voucher, keys, now_ms()).voucher_id

    # Revoking the sub-budget stops it; revoking the planner's key locks the planner out.
    delegation(h, made.api_key).RevokeSubBudget(pb.RevokeSubBudgetRequest(
        request_id=rid(), wallet_id=child.wallet.wallet_id))
    with rpc_error(OK.FAILED_PRECONDITION, "SUB_BUDGET_REVOKED"):
        sub_agent.authorize(1, scope=res_pb.Scope(model="tiny-lm"))
    revoked = owner.RevokeAgentKey(pb.RevokeAgentKeyRequest(request_id=rid(),
                                                            key_id=made.key_id)).key
    assert revoked.revoked
    with rpc_error(OK.UNAUTHENTICATED, "API_KEY_REVOKED"):
        planner.balance()
    assert list(h.summary().violations) == []


# -- mandates ---------------------------------------------------------------------------


def test_a_retried_key_creation_answers_again_without_the_secret(h):
    """CreateAgentKey and CreateSubBudget retried with their request_id: the first answer
    (same key id, same child wallet), OK, the secret empty (it is stored hashed only),
    and nothing made twice. (Found by make fuzz: the retry answered INTERNAL.)"""
    owner = delegation(h, h.owner.key)
    request = pb.CreateAgentKeyRequest(request_id=rid(), wallet_id=h.wallet_id,
                                       description="retried")
    first, again = owner.CreateAgentKey(request), owner.CreateAgentKey(request)
    assert first.api_key and again.api_key == ""
    assert again.key_id == first.key_id
    listed = owner.ListAgentKeys(pb.ListAgentKeysRequest(wallet_id=h.wallet_id)).keys
    assert [k.key_id for k in listed if k.description == "retried"] == [first.key_id]

    agent = delegation(h, first.api_key)
    request = pb.CreateSubBudgetRequest(request_id=rid(), display_name="retried child",
                                        cap=1_000)
    child, child_again = agent.CreateSubBudget(request), agent.CreateSubBudget(request)
    assert child.api_key and child_again.api_key == ""
    assert (child_again.key_id, child_again.wallet.wallet_id) == (
        child.key_id, child.wallet.wallet_id)
    child_keys = owner.ListAgentKeys(pb.ListAgentKeysRequest(
        wallet_id=child.wallet.wallet_id)).keys
    assert [k.key_id for k in child_keys] == [child.key_id]


def test_mandates_against_a_real_broker(h):
    owner = delegation(h, h.owner.key)
    key = SigningKey.generate()
    with unchanged(h, OK.INVALID_ARGUMENT, "INVALID_ARGUMENT"):
        owner.RegisterMandateKey(pb.RegisterMandateKeyRequest(request_id=rid(),
                                                              public_key=b"short"))
    registered = owner.RegisterMandateKey(pb.RegisterMandateKeyRequest(
        request_id=rid(), public_key=bytes(key.verify_key))).key
    assert registered.key_id == mandates.key_id(bytes(key.verify_key))
    assert [k.key_id for k in owner.ListMandateKeys(pb.ListMandateKeysRequest()).keys] == [
        registered.key_id]
    set_policy(h, h.owner, h.wallet_id, require_mandate=True)
    assert policy(h, h.agent).GetSpendPolicy(pol_pb.GetSpendPolicyRequest()).policy \
        .require_mandate

    def authorize(amount: int, mandate: str = ""):
        return h.agent.auths.Authorize(auth_pb.AuthorizeRequest(
            request_id=rid(), amount=amount, scope=res_pb.Scope(model="tiny-lm"),
            mandate=mandate)).authorization

    def sign(signer=key, **kw):
        return mandates.sign(signer, wallet_id=kw.pop("wallet_id", h.wallet_id),
                             per_job=kw.pop("per_job", 100_000),
                             total=kw.pop("total", 150_000),
                             expire_ms=kw.pop("expire_ms", now_ms() + 600_000),
                             issued_ms=now_ms(), **kw)

    good = sign(models=["tiny-lm"])
    head = good.rsplit(".", 1)[0]
    forged = head + "." + vouchers.b64e(SigningKey.generate().sign(head.encode()).signature)
    other = h.new_tenant()
    for mandate, code, reason in [
        ("", OK.PERMISSION_DENIED, "MANDATE_REQUIRED"),
        ("m1.x", OK.INVALID_ARGUMENT, "MANDATE_MALFORMED"),
        (forged, OK.PERMISSION_DENIED, "MANDATE_SIGNATURE_INVALID"),
        (sign(SigningKey.generate()), OK.PERMISSION_DENIED, "MANDATE_KEY_UNKNOWN"),
        (sign(expire_ms=now_ms() - 1), OK.FAILED_PRECONDITION, "MANDATE_EXPIRED"),
        (sign(wallet_id=other.wallet_id), OK.PERMISSION_DENIED, "MANDATE_WALLET_MISMATCH"),
        (sign(agent_key_id="key_0123456789abcdef"), OK.PERMISSION_DENIED,
         "MANDATE_AGENT_MISMATCH"),
        (sign(models=["big-lm"]), OK.PERMISSION_DENIED, "MANDATE_MODEL_NOT_ALLOWED"),
        (sign(per_job=99_999), OK.PERMISSION_DENIED, "MANDATE_PER_JOB_EXCEEDED"),
        (sign(total=99_999), OK.RESOURCE_EXHAUSTED, "MANDATE_TOTAL_EXCEEDED"),
    ]:
        with unchanged(h, code, reason):
            authorize(100_000, mandate)

    first = authorize(100_000, good)
    mandate_hash = mandates.parse(good).mandate_hash
    assert first.mandate_hash == mandate_hash
    got = delegation(h, h.agent.key).GetMandate(pb.GetMandateRequest(
        mandate_hash=mandate_hash)).mandate
    assert (got.used, got.max_total, got.wallet_id, list(got.models)) == (
        100_000, 150_000, h.wallet_id, ["tiny-lm"])
    with unchanged(h, OK.RESOURCE_EXHAUSTED, "MANDATE_TOTAL_EXCEEDED"):
        authorize(60_000, good)  # beyond its total: 100,000 held, 150,000 in all
    with unchanged(h, OK.NOT_FOUND, "MANDATE_NOT_FOUND"):  # another tenant sees nothing
        delegation(h, other.owner.key).GetMandate(pb.GetMandateRequest(
            mandate_hash=mandate_hash))
    h.agent.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
        request_id=rid(), authorization_id=first.authorization_id))
    assert authorize(60_000, good).mandate_hash == mandate_hash  # the cancel freed it
    owner.RevokeMandateKey(pb.RevokeMandateKeyRequest(request_id=rid(),
                                                      key_id=registered.key_id))
    with unchanged(h, OK.PERMISSION_DENIED, "MANDATE_KEY_REVOKED"):
        authorize(1_000, good)
    assert list(h.summary().violations) == []


# -- a three-level tree under concurrent load ---------------------------------------------


def test_a_three_level_tree_under_concurrent_load(h):
    """Agents at every level of root -> a -> a1 -> a11 (and a sibling b) authorize and
    cancel at once, many times over the caps: no level is ever overdrawn, each holds
    exactly what its subtree's open authorizations hold, and the audit is clean."""
    caps = {"a": 900_000, "a1": 600_000, "a11": 400_000, "b": 500_000}
    parents = {"a": "root", "a1": "a", "a11": "a1", "b": "root"}
    keys, wallets = {"root": h.agent.key}, {"root": h.wallet_id}
    for name in ("a", "a1", "a11", "b"):
        made = delegation(h, keys[parents[name]]).CreateSubBudget(pb.CreateSubBudgetRequest(
            request_id=rid(), display_name=name, cap=caps[name]))
        keys[name], wallets[name] = made.api_key, made.wallet.wallet_id
        assert made.sub_budget.depth == {"a": 1, "a1": 2, "a11": 3, "b": 1}[name]
    open_auths: dict[str, tuple[str, int]] = {}  # authorization id -> (level, amount)
    refusals: list[tuple[str, str]] = []
    lock = threading.Lock()

    def agent(name: str, seed: int) -> None:
        rng = random.Random(seed)
        client = Client(h.channel, keys[name])
        mine = []
        for _ in range(14):
            amount = rng.randrange(20_000, 70_000)
            try:
                auth = client.authorize(amount, scope=res_pb.Scope(model="tiny-lm"))
            except grpc.RpcError as error:
                with lock:
                    refusals.append((name, error_info(error).reason))
                continue
            with lock:
                open_auths[auth.authorization_id] = (name, amount)
            mine.append(auth.authorization_id)
            if rng.random() < 0.3:  # give some back, for others to take
                auth_id = mine.pop(rng.randrange(len(mine)))
                client.auths.CancelAuthorization(auth_pb.CancelAuthorizationRequest(
                    request_id=rid(), authorization_id=auth_id))
                with lock:
                    del open_auths[auth_id]

    threads = [threading.Thread(target=agent, args=(name, i * 10 + n))
               for i, name in enumerate(("root", "a", "a1", "a11", "b")) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    # Every level was pushed past its cap, and refused only for that.
    assert {name for name, _ in refusals} >= {"a1", "a11", "b"}
    assert {reason for _, reason in refusals} <= {"SUB_BUDGET_EXCEEDED", "INSUFFICIENT_FUNDS"}
    owner = delegation(h, h.owner.key)
    for name, cap in caps.items():
        level = owner.GetSubBudget(pb.GetSubBudgetRequest(wallet_id=wallets[name])).sub_budget
        subtree = {name} | {n for n in caps if name in _ancestors(n, parents)}
        expected = sum(a for lv, a in open_auths.values() if lv in subtree)
        assert (level.held, level.spent) == (expected, 0), name
        assert level.held + level.spent <= cap, f"{name} is overdrawn"
    assert h.wallet().pending == sum(a for _, a in open_auths.values())
    assert list(h.summary().violations) == []


def _ancestors(name: str, parents: dict[str, str]) -> set[str]:
    out = set()
    while name in parents:
        name = parents[name]
        out.add(name)
    return out


# -- receipts and statements roll up to the parents ----------------------------------------


def test_receipts_and_statements_roll_up_a_three_level_tree(h):
    """root -> a -> a1 -> a11 -> a111 (the deepest a tree may go), and a sibling b of a,
    with jobs run (redeemed, metered, finished) at every level: the owner's statement
    subtotals each level's subtree, and the totals are the receipts' charges; an
    ancestor's key lists and gets its descendants' receipts, a sibling's or a
    descendant's key neither."""
    worker_id, usage_key = register_signing_worker(h)  # the charge is the GPU-ms
    parents = {"a": "root", "a1": "a", "a11": "a1", "a111": "a11", "b": "root"}
    clients, wallets = {"root": h.agent}, {"root": h.wallet_id}
    for name in ("a", "a1", "a11", "a111", "b"):
        made = delegation(h, clients[parents[name]].key).CreateSubBudget(
            pb.CreateSubBudgetRequest(request_id=rid(), display_name=name, cap=200_000))
        clients[name], wallets[name] = Client(h.channel, made.api_key), made.wallet.wallet_id
    jobs = {"root": [1_000], "a": [2_000], "a1": [3_000, 300], "a11": [4_000],
            "a111": [700], "b": [5_000]}
    auths: dict[str, list[auth_pb.Authorization]] = {name: [] for name in jobs}
    receipts = {}  # receipt id -> level
    for name, runs in jobs.items():
        for gpu_ms in runs:
            auth = clients[name].authorize(50_000, scope=res_pb.Scope(model="tiny-lm"))
            receipt = charge(h, worker_id, auth.voucher, gpu_ms, usage_key)
            assert receipt.charged == gpu_ms
            auths[name].append(auth)
            receipts[receipt.receipt_id] = name

    def below(name: str) -> set[str]:  # the level and its descendants
        return {n for n in jobs if n == name or name in _ancestors(n, parents)}

    # The statement: each level's roll-up is its subtree's charges, at every level.
    statement = h.owner.statements.GetStatement(st_pb.GetStatementRequest(
        period_start=convert.timestamp(now_ms() - 86_400_000),
        period_end=convert.timestamp(now_ms() + 60_000))).statement
    lines = {w.wallet_id: w for w in statement.wallets}
    for name, wallet_id in wallets.items():
        line = lines[wallet_id]
        own = sum(jobs[name])
        subtree = sum(sum(jobs[n]) for n in below(name))
        assert (line.charged, line.job_count) == (own, len(jobs[name])), name
        assert (line.rollup_charged, line.rollup_job_count) == (
            subtree, sum(len(jobs[n]) for n in below(name))), name
        assert line.rollup_released == sum(50_000 * len(jobs[n]) for n in below(name)) - \
            subtree, name
        assert line.parent_wallet_id == wallets.get(parents.get(name, ""), "")
        assert line.depth == len(_ancestors(name, parents))
    assert statement.total_charged == sum(map(sum, jobs.values())) == \
        lines[h.wallet_id].rollup_charged
    # The roll-up is in the signed payload too.
    signed = {w["wallet_id"]: w for w in json.loads(statement.signed_payload)["wallets"]}
    assert signed[wallets["a"]]["rollup_charged"] == 2_000 + 3_300 + 4_000 + 700
    assert lines[wallets["a111"]].depth == 4

    # Receipts: each key lists exactly its subtree's, each naming the wallet it was
    # spent from; an ancestor may also name a descendant's wallet, and get its receipts.
    for name, client in clients.items():
        listed = client.statements.ListReceipts(st_pb.ListReceiptsRequest()).receipts
        assert {r.receipt_id for r in listed} == {
            r for r, level in receipts.items() if level in below(name)}, name
        assert {r.wallet_id for r in listed} == {wallets[n] for n in below(name)}
    deep = clients["a"].statements.ListReceipts(st_pb.ListReceiptsRequest(
        wallet_id=wallets["a11"])).receipts
    assert {r.wallet_id for r in deep} == {wallets["a11"], wallets["a111"]}
    for ancestor in ("root", "a", "a1"):
        got = clients[ancestor].receipt(auths["a11"][0].authorization_id)
        assert (got.charged, got.wallet_id) == (4_000, wallets["a11"])
    # A sibling, or a descendant looking up, sees nothing: as if it did not exist.
    for name, other in [("b", "a"), ("b", "a111"), ("a", "b"), ("a111", "a11"),
                        ("a11", "a"), ("a1", "root")]:
        with rpc_error(OK.NOT_FOUND, "WALLET_NOT_FOUND"):
            clients[name].statements.ListReceipts(st_pb.ListReceiptsRequest(
                wallet_id=wallets[other]))
        with rpc_error(OK.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
            clients[name].receipt(auths[other][0].authorization_id)
    # Reading a descendant's receipt gives no other power over its authorization.
    with rpc_error(OK.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"):
        clients["a"].get_authorization(auths["a11"][0].authorization_id)

    # The console (over the broker's API, as its pages call it): the statement CSV's
    # wallet rows carry the roll-up, and each receipt is shown once, under its wallet.
    console = ConsoleClient(h.channel, h.owner.key)
    rows = views.statement_rows(console, now_ms() - 86_400_000, now_ms() + 60_000, "day")
    table = list(csv.DictReader(io.StringIO(views.to_csv(rows))))
    (whole,) = [r for r in table if r["kind"] == "range_total"]
    assert int(whole["charged"]) == sum(map(sum, jobs.values()))
    by_wallet = {r["id"]: r for r in table if r["kind"] == "wallet"}
    for name, wallet_id in wallets.items():
        row = by_wallet[wallet_id]
        assert int(row["rollup_charged"]) == sum(sum(jobs[n]) for n in below(name))
        assert row["parent_wallet_id"] == wallets.get(parents.get(name, ""), "")
    shown = views.receipts(console)
    assert sorted(r["receipt_id"] for r in shown) == sorted(receipts)
    assert {r["receipt_id"]: r["wallet_name"] for r in shown} == {
        r: ("demo agent wallet" if level == "root" else level)
        for r, level in receipts.items()}
    assert list(h.summary().violations) == []

