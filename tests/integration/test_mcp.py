"""broker-mcp against a real broker and worker, driven by the MCP SDK's own client over
stdio: the tool list and its schemas, a generate job whose charge is the ledger's, a
retried request_id that pays once, a job whose estimate is above its maximum refused
before any hold, bad arguments, the owner's approval, a revoked key, a worker that
cannot be reached and a broker that is down.

Set MCP_TRANSCRIPT=FILE to write the session of test_generate_job (the README's
"Use from an LLM agent" transcript)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from broker.v1 import admin_service_pb2 as admin_pb
from broker.v1 import authorization_service_pb2 as auth_pb
from broker.v1 import policy_service_pb2 as pol_pb
from common.files import write_secret

from .broker_process import ROOT, free_port
from .conftest import balance_tuple, rid, worker_world
from .spend_helpers import policy, set_policy

TOOLS = {"find_offers", "run_job", "get_spend_status", "list_receipts", "get_receipt",
         "cancel_authorization", "wait_for_approval"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with worker_world(tmp_path_factory.mktemp("mcp")) as w:
        yield w


@contextlib.asynccontextmanager
async def mcp_session(target: str, api_key: str, directory: Path):
    """A broker-mcp process on stdio for `api_key`, and the SDK's client to it."""
    key_file = directory / f"agent-key-{uuid.uuid4().hex[:8]}"
    write_secret(key_file, api_key.encode())
    params = StdioServerParameters(
        command=sys.executable, cwd=str(ROOT),
        args=["-m", "broker.mcp.cli", "--broker", target, "--api-key-file", str(key_file)])
    with open(directory / "broker-mcp.log", "a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=120) as c:
            yield c


def call(result) -> dict:
    """A successful call's structured result."""
    assert not result.is_error, result.content[0].text
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


def owner_total(world) -> int:
    """The owner's posted money: treasury plus the agent's wallet (refills move money
    between the two; only charges take it out)."""
    return world.h.treasury().posted + world.h.wallet().posted


def authorizations(world) -> list:
    return list(world.h.owner.auths.ListAuthorizations(auth_pb.ListAuthorizationsRequest(
        wallet_id=world.h.wallet_id, page_size=1000)).authorizations)


def test_tools_and_their_input_schemas(world, tmp_path):
    async def session():
        async with mcp_session(world.broker.target, world.creds["agent_api_key"],
                               tmp_path) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in anyio.run(session)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description) > 80, tool.name  # written for a model
        assert tool.input_schema["type"] == "object" and tool.output_schema, tool.name
    run = tools["run_job"].input_schema
    assert sorted(run["required"]) == ["max_spend", "request_id"]
    assert run["additionalProperties"] is False  # unknown arguments are refused
    props = run["properties"]
    assert (props["max_spend"]["type"], props["max_spend"]["minimum"]) == ("integer", 1)
    assert props["max_spend"]["maximum"] == 2**53 - 1
    assert "micro-credits" in props["max_spend"]["description"]
    assert (props["request_id"]["minLength"], props["request_id"]["maxLength"]) == (1, 64)
    assert props["kind"]["enum"] == ["generate", "burn"]
    assert "never pays twice" in tools["run_job"].description
    assert tools["get_spend_status"].annotations.read_only_hint
    assert not tools["run_job"].annotations.read_only_hint
    assert tools["wait_for_approval"].input_schema["properties"]["timeout_seconds"][
        "maximum"] == 3600
    # The README's transcript (from test_generate_job...) lists the tools there are.
    readme = (ROOT / "README.md").read_text()
    listed = readme.split("→ tools/list\n", 1)[1].split("→", 1)[0]
    assert {line.split(":")[0].strip() for line in listed.splitlines()} == TOOLS


def test_generate_job_charge_is_the_ledgers_and_a_retry_pays_once(world, tmp_path):
    request_id = rid()
    job = {"request_id": request_id, "max_spend": 500_000, "model": "tiny-lm",
           "prompt": "Hello, agent!", "max_new_tokens": 12}
    progress: list = []
    transcript: list = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    async def session():
        async with mcp_session(world.broker.target, world.creds["agent_api_key"],
                               tmp_path) as client:
            tools = (await client.list_tools()).tools
            transcript.append(("tools/list", None, [
                {"name": t.name, "description": t.description.split(". ")[0] + "."}
                for t in tools]))
            status = call(await client.call_tool("get_spend_status", {"amount": 500_000}))
            transcript.append(("get_spend_status", {"amount": 500_000}, status))
            offers = call(await client.call_tool("find_offers", {
                "model": "tiny-lm", "input_tokens": 13, "max_new_tokens": 12}))
            transcript.append(("find_offers", {"model": "tiny-lm", "input_tokens": 13,
                                               "max_new_tokens": 12}, offers))
            first = call(await client.call_tool("run_job", job, progress_callback=on_progress))
            transcript.append(("run_job", job, first))
            receipt = call(await client.call_tool("get_receipt", {
                "authorization_id": first["authorization_id"]}))
            transcript.append(("get_receipt", {"authorization_id": first["authorization_id"]},
                               receipt))
            again = call(await client.call_tool("run_job", job))
            listed = call(await client.call_tool("list_receipts", {"limit": 5}))
            later = call(await client.call_tool("find_offers", {"model": "tiny-lm"}))
            return status, offers, first, receipt, again, listed, later

    before = owner_total(world)
    status, offers, first, receipt, again, listed, later = anyio.run(session)
    assert later["offers"][0]["history_jobs"] >= 1  # the job joined the measured history
    assert status["would_refuse"] == [] and status["can_spend_now"] >= 500_000
    assert offers["offers"][0]["worker_id"] == world.worker_id
    assert offers["offers"][0]["eligible"]
    assert first["status"] == "completed", first
    assert len(first["output"]) == 12  # tiny-lm: one character per token
    assert first["worker_id"] == world.worker_id
    assert first["usage"]["output_tokens"] == 12
    # The charge is what the ledger took out of the owner's money, never above max_spend.
    assert 0 < first["charged"] <= 500_000
    assert first["charged"] + first["released"] == 500_000
    assert before - owner_total(world) == first["charged"]
    broker_receipt = world.agent.get_receipt(first["authorization_id"])
    assert (broker_receipt.receipt_id, broker_receipt.charged) == \
        (first["receipt_id"], first["charged"])
    assert (receipt["receipt_id"], receipt["charged"]) == (first["receipt_id"],
                                                           first["charged"])
    assert first["receipt_id"] in [r["receipt_id"] for r in listed["receipts"]]
    # Progress notifications while it ran: accepted, one per token, usage, strictly growing.
    messages = [m for _, m in progress]
    assert messages[0].startswith("accepted by worker") and "12 tokens out" in messages
    values = [v for v, _ in progress]
    assert values == sorted(set(values))
    # The retry answered the first result again and paid nothing more.
    assert again == first
    assert before - owner_total(world) == first["charged"]
    assert world.h.wallet().pending == 0
    transcript_file = os.environ.get("MCP_TRANSCRIPT")
    if transcript_file:
        Path(transcript_file).write_text(render(transcript, len(progress)))


def test_a_retry_from_a_new_process_pays_once(world, tmp_path):
    """The request_id is the broker's idempotency key: a broker-mcp that never saw the
    first call (restarted) answers with the first call's receipt and charges nothing."""
    job = {"request_id": rid(), "max_spend": 400_000, "model": "tiny-lm", "prompt": "Hi",
           "max_new_tokens": 4}

    async def once():
        async with mcp_session(world.broker.target, world.creds["agent_api_key"],
                               tmp_path) as client:
            return call(await client.call_tool("run_job", job))

    first = anyio.run(once)
    total = owner_total(world)
    count = len(authorizations(world))
    second = anyio.run(once)
    assert (second["authorization_id"], second["receipt_id"], second["charged"]) == \
        (first["authorization_id"], first["receipt_id"], first["charged"])
    assert "already ran and was paid once" in second["message"]
    assert (owner_total(world), len(authorizations(world))) == (total, count)


def test_refusals_before_any_hold(world, tmp_path):
    """An estimate above max_spend, bad arguments, an unknown model: a precise tool
    error, and nothing held or spent."""
    calls = [
        # The call price alone (50) is above a max_spend of 10.
        ({"max_spend": 10, "model": "tiny-lm", "prompt": "Hi"}, "ESTIMATE_ABOVE_MAX_SPEND"),
        ({"max_spend": -5, "model": "tiny-lm", "prompt": "Hi"}, "max_spend"),
        ({"max_spend": 10**30, "model": "tiny-lm", "prompt": "Hi"}, "max_spend"),
        ({"max_spend": 1000, "model": "tiny-lm", "prompt": "Hi", "max_new_tokens": 0},
         "max_new_tokens"),
        ({"max_spend": 1000, "model": "tiny-lm", "prompt": "Hi", "colour": "red"}, "colour"),
        ({"max_spend": 100_000, "model": "no-such-model", "prompt": "Hi"}, "MODEL_NOT_FOUND"),
        ({"max_spend": 100_000, "model": "tiny-lm"}, "needs model and prompt"),
        ({"max_spend": 100_000_000, "model": "tiny-lm", "prompt": "Hi"}, "INSUFFICIENT_FUNDS"),
    ]

    async def session():
        async with mcp_session(world.broker.target, world.creds["agent_api_key"],
                               tmp_path) as client:
            return [error_text(await client.call_tool("run_job",
                                                      {"request_id": rid(), **args}))
                    for args, _ in calls]

    before = (balance_tuple(world.h.wallet()), len(authorizations(world)))
    texts = anyio.run(session)
    for (args, expected), text in zip(calls, texts, strict=True):
        assert expected in text, (args, text)
    assert "cheapest offer's expected cost" in texts[0] and "Next:" in texts[0]
    assert "Next:" in texts[5] and "Nothing was reserved or spent" in texts[7]
    assert (balance_tuple(world.h.wallet()), len(authorizations(world))) == before


def test_a_job_above_the_approval_threshold_waits_for_the_owner(world, tmp_path):
    t = world.h.new_tenant(wallet_funding=1_000_000)
    set_policy(world.h, t.owner, limits=pol_pb.SpendLimits(daily=800_000),
               approvals=pol_pb.ApprovalRules(threshold=100_000, timeout_seconds=600,
                                              reserve_funds=False))
    job = {"request_id": rid(), "max_spend": 300_000, "model": "tiny-lm", "prompt": "Hi",
           "max_new_tokens": 4}

    async def session():
        async with mcp_session(world.broker.target, t.agent.key, tmp_path) as client:
            status = call(await client.call_tool("get_spend_status", {"amount": 900_000}))
            waiting = call(await client.call_tool("run_job", job))
            auth_id = waiting["authorization_id"]
            pending = call(await client.call_tool("wait_for_approval", {
                "authorization_id": auth_id, "timeout_seconds": 1}))
            not_yet = call(await client.call_tool("run_job", job))
            policy(world.h, t.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
                request_id=rid(), authorization_id=auth_id, reason="fine"))
            approved = call(await client.call_tool("wait_for_approval", {
                "authorization_id": auth_id, "timeout_seconds": 30}))
            ran = call(await client.call_tool("run_job", job))
            # Approved, then no longer wanted: cancelled, and its request_id is spent.
            other = {**job, "request_id": rid()}
            other_id = call(await client.call_tool("run_job", other))["authorization_id"]
            policy(world.h, t.owner).ApproveAuthorization(pol_pb.ApproveAuthorizationRequest(
                request_id=rid(), authorization_id=other_id))
            cancelled = call(await client.call_tool("cancel_authorization", {
                "authorization_id": other_id}))
            after = error_text(await client.call_tool("run_job", other))
            again = error_text(await client.call_tool("cancel_authorization", {
                "authorization_id": ran["authorization_id"]}))
            return status, waiting, pending, not_yet, approved, ran, cancelled, after, again

    status, waiting, pending, not_yet, approved, ran, cancelled, after, again = \
        anyio.run(session)
    assert status["limits"] == [{"period": "daily", "limit": 800_000, "spent": 0,
                                 "left": 800_000}]
    assert (status["available"], status["can_spend_now"]) == (1_000_000, 800_000)
    assert [r.split(":")[0] for r in status["would_refuse"]] == \
        ["SPEND_LIMIT_EXCEEDED", "APPROVAL_NEEDED"]
    assert waiting["status"] == "waiting_for_owner" and waiting["charged"] == 0
    assert waiting["authorization_id"].startswith("auth_")
    assert "wait_for_approval" in waiting["message"]
    assert pending["decision"] == "pending" and pending["deadline"]
    assert not_yet["status"] == "waiting_for_owner"
    assert (approved["decision"], approved["reason"]) == ("approved", "fine")
    assert ran["status"] == "completed"
    assert ran["authorization_id"] == waiting["authorization_id"]
    assert 0 < ran["charged"] <= 300_000
    receipt = t.agent.receipt(ran["authorization_id"])
    assert receipt.charged == ran["charged"]
    assert (cancelled["state"], cancelled["released"]) == ("cancelled", 300_000)
    assert "AUTHORIZATION_CANCELLED" in after and "new request_id" in after
    assert "AUTHORIZATION_NOT_CANCELLABLE (FAILED_PRECONDITION)" in again
    assert t.owner.balance(t.wallet_id).pending == 0


def test_a_revoked_key_is_a_tool_error_that_says_what_to_do(world, tmp_path):
    created = world.h.admin.admin.CreateApiKey(admin_pb.CreateApiKeyRequest(
        request_id=rid(), role=admin_pb.ROLE_AGENT, owner_id=world.h.owner_id,
        wallet_id=world.h.wallet_id))
    world.h.admin.admin.RevokeApiKey(admin_pb.RevokeApiKeyRequest(
        request_id=rid(), key_id=created.key_id))

    async def session():
        async with mcp_session(world.broker.target, created.api_key, tmp_path) as client:
            return (error_text(await client.call_tool("get_spend_status", {})),
                    error_text(await client.call_tool("run_job", {
                        "request_id": rid(), "max_spend": 100_000, "model": "tiny-lm",
                        "prompt": "Hi"})))

    before = balance_tuple(world.h.wallet())
    for text in anyio.run(session):
        assert text.count("API_KEY_REVOKED (UNAUTHENTICATED)") == 1, text
        assert "Next: this server's API key was revoked" in text
        assert created.api_key not in text
    assert balance_tuple(world.h.wallet()) == before


def test_an_unreachable_worker_releases_the_hold(world, tmp_path):
    """A worker listed at the broker but not answering: the hold is cancelled at once."""
    ghost = world.h.register_worker(models=("ghost-lm",), resource_class="cpu")
    job = {"request_id": rid(), "max_spend": 200_000, "model": "ghost-lm", "prompt": "Hi",
           "worker_id": ghost}

    async def session():
        async with mcp_session(world.broker.target, world.creds["agent_api_key"],
                               tmp_path) as client:
            return error_text(await client.call_tool("run_job", job))

    before = (owner_total(world), world.h.wallet().pending)
    text = anyio.run(session)
    assert text.startswith("Error executing tool run_job: UNAVAILABLE:"), text
    assert "No worker ran the job" in text and "Next:" in text
    assert "Nothing was spent: the reservation (auth_" in text
    auth_id = text.split("reservation (")[1].split(")")[0]
    assert world.h.owner.get_authorization(auth_id).state == \
        auth_pb.AUTHORIZATION_STATE_CANCELLED
    assert (owner_total(world), world.h.wallet().pending) == before


def test_a_broker_that_is_down(world, tmp_path):
    async def session():
        async with mcp_session(f"127.0.0.1:{free_port()}", world.creds["agent_api_key"],
                               tmp_path) as client:
            return error_text(await client.call_tool("run_job", {
                "request_id": rid(), "max_spend": 1000, "model": "tiny-lm", "prompt": "Hi"}))

    text = anyio.run(session)
    assert "UNAVAILABLE" in text and "Nothing was reserved or spent" in text
    assert "Next: it could not be reached" in text


def test_streamable_http_transport(world, tmp_path):
    """The same tools over streamable HTTP; the key comes from the environment."""
    port = free_port()
    env = {**os.environ, "BROKER_MCP_API_KEY": world.creds["agent_api_key"]}
    with open(tmp_path / "broker-mcp-http.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.mcp.cli", "--broker", world.broker.target,
             "--transport", "streamable-http", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server)

        async def session():
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                tools = (await client.list_tools()).tools
                return tools, call(await client.call_tool("get_spend_status", {}))

        tools, status = anyio.run(session)
    finally:
        server.terminate()
        server.wait(10)
    assert {t.name for t in tools} == TOOLS
    assert (status["wallet_id"], status["available"]) == \
        (world.h.wallet_id, world.h.wallet().available)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "broker-mcp exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise AssertionError(f"broker-mcp did not listen on {port}")


def render(transcript: list, progress_count: int) -> str:
    """The session as the README shows it: each request and its structured result."""
    lines = []
    for method, arguments, result in transcript:
        if method == "tools/list":
            lines.append("→ tools/list")
            lines += [f"  {t['name']}: {t['description']}" for t in result]
            continue
        lines.append(f"→ tools/call {method} {json.dumps(arguments)}")
        if method == "run_job":
            lines.append(f"  ({progress_count} progress notifications while it ran)")
        lines += ["  " + line for line in json.dumps(result, indent=2).splitlines()]
    return "\n".join(lines) + "\n"
