"""The MCP tools of one agent: find offers, run a job within a maximum spend, spend
status, receipts, cancel, wait for the owner's approval.

Every tool calls the broker through `BrokerClient` (blocking gRPC) in a worker thread.
Money rules that a tool keeps on its own side, on top of the broker's:

- run_job reserves exactly `max_spend` (the hold); the broker never charges above a hold
  and stops the worker before it runs out, so a job never costs more.
- run_job refuses, before any hold, a job whose expected cost is above `max_spend`.
- run_job's `request_id` is the broker's idempotency key for the quote and the
  authorization: a retried call gets the same authorization and its single-use voucher,
  so it can never be paid twice. Calls with the same request_id run one at a time here,
  and a finished one's result is answered again.
- When no worker accepted the job, the hold is cancelled at once: nothing stays held.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import ConfigDict, Field

from worker.v1 import worker_service_pb2 as worker_pb

from ..client import BrokerClient, BrokerClientError
from ..v1 import authorization_service_pb2 as auth_pb
from ..v1 import policy_service_pb2 as policy_pb
from . import results
from .errors import tool_error

T = TypeVar("T")

# The largest integer a JSON number carries exactly (JavaScript hosts).
JSON_INT_MAX = 2**53 - 1
MAX_REMEMBERED = 10_000
NOTHING = "Nothing was reserved or spent"

INSTRUCTIONS = """\
Buy GPU compute for this agent from a compute broker. Amounts are integer micro-credits
(1 credit = 1,000,000). A job never costs more than the max_spend you give run_job; what
it does not use goes back to the wallet. Typical flow: get_spend_status (what you may
spend), find_offers (prices and cost estimates), run_job (runs and pays), get_receipt.
Give every new job a new request_id; to retry a job that failed or timed out, call
run_job again with the SAME request_id: it is never paid twice."""

RequestId = Annotated[str, Field(
    min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
    description="An id you choose for this job (e.g. a UUID), 1 to 64 printable ASCII "
    "characters without spaces. A new job needs a new id; calling again with the same id "
    "retries the same job and never pays twice.")]
MaxSpend = Annotated[int, Field(
    ge=1, le=JSON_INT_MAX,
    description="The most this job may cost, in micro-credits (1 credit = 1,000,000). "
    "This amount is reserved on the wallet while the job runs; the unused rest is "
    "released. A job whose expected cost is higher is refused before anything is "
    "reserved.")]
Kind = Annotated[Literal["generate", "burn"], Field(
    description="generate: text generation with `model`. burn: pure GPU compute for "
    "`duration_ms` (billed by GPU time).")]
Model = Annotated[str, Field(max_length=128, description="Model name for generate, e.g. "
                             "tiny-lm (find_offers lists what is served).")]
Prompt = Annotated[str, Field(max_length=16_384, description="The prompt (generate).")]
MaxNewTokens = Annotated[int, Field(ge=1, le=4096, description="Tokens to generate.")]
DurationMs = Annotated[int, Field(ge=0, le=3_600_000, description="GPU time to burn, in "
                                  "milliseconds (burn only).")]
WorkerId = Annotated[str, Field(max_length=128, description="Run on this offer's worker "
                                "(from find_offers); empty: the best offer.")]
AuthorizationId = Annotated[str, Field(min_length=1, max_length=128,
                                       description="The authorization id (auth_...).")]

STATUS = {worker_pb.JOB_STATUS_COMPLETED: "completed", worker_pb.JOB_STATUS_STOPPED: "stopped",
          worker_pb.JOB_STATUS_FAILED: "failed", worker_pb.JOB_STATUS_CANCELLED: "cancelled"}
DECISION = {policy_pb.APPROVAL_STATE_PENDING: "pending",
            policy_pb.APPROVAL_STATE_APPROVED: "approved",
            policy_pb.APPROVAL_STATE_DENIED: "denied",
            policy_pb.APPROVAL_STATE_EXPIRED: "expired"}
LIMITS = (("daily", "spent_today"), ("weekly", "spent_this_week"),
          ("monthly", "spent_this_month"), ("all_time", "spent_all_time"))


class AgentTools:
    """The tools, bound to one agent's BrokerClient."""

    def __init__(self, client: BrokerClient, *, job_timeout: float = 300.0):
        self.client = client
        self.job_timeout = job_timeout
        self._locks: dict[str, anyio.Lock] = {}
        # Settled jobs by request_id, answered again to a retry.
        self._finished: dict[str, results.JobResult | ToolError] = {}

    async def _call(self, fn: Callable[..., T], *args: Any, what: str = "", spent: str = "",
                    **kwargs: Any) -> T:
        """`fn` in a worker thread; a broker error becomes a tool error (`what` failed,
        and what became of the money: `spent`)."""
        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except BrokerClientError as error:
            raise tool_error(error, what=what, spent=spent) from None

    # -- find_offers ---------------------------------------------------------------------

    async def find_offers(self, model: Model = "", kind: Kind = "generate",
                          input_tokens: Annotated[int, Field(ge=0, le=1_000_000)] = 0,
                          max_new_tokens: MaxNewTokens = 32, duration_ms: DurationMs = 0,
                          latency_target_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 0,
                          max_spend: Annotated[int, Field(ge=0, le=JSON_INT_MAX)] = 0,
                          ) -> results.QuoteResult:
        """Find the live offers for a job and what it would cost. Free: reserves and spends
        nothing. Returns the offers best first, each with its unit prices, a cost
        estimate (low / expected / high, micro-credits) and measured latency; `eligible`
        offers fit max_spend (0: no maximum) and the latency target. Prices are locked
        for a minute under quote_id. Then call run_job with a max_spend above the
        cost_high of the offer you want, with a margin when its history_jobs is 0."""
        quote = await self._call(self.client.quote, kind, **_job_estimate(
            kind, model, input_tokens, max_new_tokens, duration_ms),
            latency_target_ms=latency_target_ms, max_cost=max_spend)
        return results.quote_result(quote)

    # -- run_job -------------------------------------------------------------------------

    async def run_job(self, request_id: RequestId, max_spend: MaxSpend, ctx: Context,
                      model: Model = "", prompt: Prompt = "", kind: Kind = "generate",
                      max_new_tokens: MaxNewTokens = 32, duration_ms: DurationMs = 0,
                      worker_id: WorkerId = "") -> results.JobResult:
        """Run one job on a worker and pay for it from the wallet: reserves max_spend,
        runs the job (progress is reported while it runs), charges what it used (never
        more than max_spend) and releases the rest. Returns the output, the charge, the
        receipt id and the authorization id. Refused before anything is reserved when the
        expected cost is above max_spend. If the owner must approve jobs this large, it
        returns status waiting_for_owner with the authorization id: call
        wait_for_approval, then run_job again with the same request_id. Retrying with the
        same request_id never pays twice; a new job needs a new request_id."""
        job, estimate = _job(kind, model, prompt, max_new_tokens, duration_ms)
        lock = self._locks.setdefault(request_id, anyio.Lock())
        async with lock:
            if request_id not in self._finished:
                result = await self._run_job(request_id, max_spend, model, kind, job,
                                             estimate, worker_id, ctx)
                if result.status == "waiting_for_owner":
                    return result
                self._remember(request_id, result)
            found = self._finished[request_id]
            if isinstance(found, ToolError):
                raise found
            return found

    def _remember(self, request_id: str, result: results.JobResult) -> None:
        """Keep a settled job's answer (a failed one as its error) for retries."""
        if len(self._finished) >= MAX_REMEMBERED:
            oldest = next(iter(self._finished))
            del self._finished[oldest]
            self._locks.pop(oldest, None)
        if result.status in ("failed", "cancelled"):
            self._finished[request_id] = ToolError(
                f"JOB_{result.status.upper()}: {result.error or 'no details'}. "
                f"{result.charged} micro-credits were charged for the usage until then "
                f"and the rest of max_spend was released (receipt {result.receipt_id}, "
                f"authorization {result.authorization_id}). Next: check the job's "
                f"arguments; retry it with a new request_id.")
        else:
            self._finished[request_id] = result

    async def _run_job(self, request_id: str, max_spend: int, model: str, kind: str,
                       job: worker_pb.Job, estimate: dict, worker_id: str,
                       ctx: Context) -> results.JobResult:
        quote = await self._call(self.client.quote, kind, **estimate, max_cost=max_spend,
                                 request_id=request_id, what="Quote for the job failed",
                                 spent=NOTHING)
        offers = [o for o in quote.offers if not worker_id or o.worker_id == worker_id]
        if not offers:
            raise ToolError(f"OFFER_NOT_IN_QUOTE: no live offer from worker {worker_id!r} "
                            f"for this job. Nothing was reserved or spent. Next: call "
                            f"find_offers and pick a worker_id it lists, or leave it empty.")
        if not any(o.within_max_cost for o in offers):
            cheapest = min(o.cost.expected for o in offers)
            raise ToolError(f"ESTIMATE_ABOVE_MAX_SPEND: the cheapest offer's expected cost "
                            f"is {cheapest} micro-credits, above max_spend {max_spend}. "
                            f"Nothing was reserved or spent. Next: raise max_spend to at "
                            f"least {cheapest}, or shorten the job.")
        auth = await self._call(
            self.client.authorize, max_spend, model=model if kind == "generate" else "",
            worker_id=worker_id, quote_id=quote.quote_id, select_best_offer=not worker_id,
            ttl_seconds=int(self.job_timeout) + 60, request_id=request_id,
            what="The payment was not authorized", spent=NOTHING)
        # A retried request_id replays the first answer: ask for the state it is in now.
        now = await self._call(self.client.get_authorization, auth.authorization_id,
                               spent=f"{auth.amount} may be reserved ({auth.authorization_id}"
                               f"): run_job again with the same request_id, or "
                               f"cancel_authorization")
        state = now.state
        if state == auth_pb.AUTHORIZATION_STATE_PENDING_APPROVAL:
            return _outcome(request_id, max_spend, auth, "waiting_for_owner",
                            message="Waiting for the owner: a job this large needs their "
                            "approval, nothing runs and nothing is charged until then. Call "
                            "wait_for_approval with this authorization_id, then run_job "
                            "again with the same request_id.")
        if state == auth_pb.AUTHORIZATION_STATE_SETTLED:
            found = await self._call(self.client.get_receipt, auth.authorization_id,
                                     spent=_ran(auth.authorization_id))
            status = "stopped" if found.outcome == "STOPPED" else "completed"
            return _settled(request_id, max_spend, auth, found, "", "", status,
                            "This request_id already ran and was paid once; this is its "
                            "receipt (its output is kept only by the broker-mcp process "
                            "that ran it).")
        if state != auth_pb.AUTHORIZATION_STATE_HELD:
            name = auth_pb.AuthorizationState.Name(state).removeprefix("AUTHORIZATION_STATE_")
            raise ToolError(f"AUTHORIZATION_{name}: the authorization "
                            f"{auth.authorization_id} of this request_id is {name.lower()}. "
                            f"Nothing more is charged. Next: use a new request_id to run "
                            f"the job again, or get_receipt for one that ran.")
        return await self._execute(request_id, max_spend, auth, job, ctx)

    async def _execute(self, request_id: str, max_spend: int, auth: auth_pb.Authorization,
                       job: worker_pb.Job, ctx: Context) -> results.JobResult:
        seen = {"accepted": False, "events": 0, "tokens": 0}

        def on_event(offer, event) -> None:
            kind = event.WhichOneof("kind")
            seen["events"] += 1
            if kind == "accepted":
                seen["accepted"] = True
                text = f"accepted by worker {offer.worker_id}"
            elif kind == "output":
                seen["tokens"] += max(1, len(event.output.token_ids))
                text = f"{seen['tokens']} tokens out"
            elif kind == "usage":
                text = f"charged {event.usage.charged} of {max_spend} so far"
            else:
                text = "finished"
            # The MCP spec wants progress to grow with every notification: count events.
            anyio.from_thread.run(ctx.report_progress, seen["events"], None, text)

        try:
            execution = await anyio.to_thread.run_sync(lambda: self.client.execute(
                auth, job, timeout=self.job_timeout, on_event=on_event))
        except BrokerClientError as error:
            if seen["accepted"]:
                raise tool_error(error, what="The worker failed after it started the job",
                                 spent="Only the usage measured until then is charged; "
                                 f"get_receipt('{auth.authorization_id}') shows it") from None
            released = await self._release(auth.authorization_id)
            raise tool_error(error, what="No worker ran the job", spent=released) from None
        result = execution.result
        found = await self._call(self.client.get_receipt, auth.authorization_id,
                                 spent=_ran(auth.authorization_id))
        output = json.loads(result.result_json or "{}").get("text") or "".join(
            e.output.text for e in execution.events if e.WhichOneof("kind") == "output")
        status = STATUS.get(result.status, "failed")
        message = {"completed": "The job ran to the end.",
                   "stopped": "The job reached max_spend and was cut off; the output is "
                   "partial. Raise max_spend to get all of it.",
                   "failed": "The job failed on the worker; only its usage is charged.",
                   "cancelled": "The job was cancelled; only its usage is charged."}[status]
        return _settled(request_id, max_spend, auth, found, output, execution.offer.worker_id,
                        status, message, error=result.error)

    async def _release(self, authorization_id: str) -> str:
        """Cancel an authorization no worker redeemed: its hold goes back to the wallet."""
        try:
            await anyio.to_thread.run_sync(self.client.cancel, authorization_id)
            return f"Nothing was spent: the reservation ({authorization_id}) was released"
        except BrokerClientError as error:
            return (f"Releasing the reservation ({authorization_id}) failed with "
                    f"{error.reason or error.code.name}: get_receipt shows whether a job "
                    f"ran; if none did, it is released when it expires")

    # -- spend status, receipts, cancel, approvals -----------------------------------------

    async def get_spend_status(
            self, amount: Annotated[int, Field(ge=0, le=JSON_INT_MAX, description=(
                "Optional: a max_spend you consider; would_refuse says which rule would "
                "refuse it or make it wait for the owner."))] = 0) -> results.SpendStatus:
        """The wallet's balance and the owner's spend limits: what is available, what is
        left today and this month under each limit, the largest max_spend no rule refuses
        now, and (for `amount`) why a job of that size would be refused. Free."""
        balance = await self._call(self.client.balance)
        status = await self._call(self.client.spend_status)
        found = await self._call(self.client.spend_policy)
        policy = found.policy
        limits = []
        for period, spent_field in LIMITS:
            limit, spent = getattr(policy.limits, period), getattr(status, spent_field)
            if limit:
                limits.append(results.Limit(period=period, limit=limit, spent=spent,
                                            left=max(0, limit - spent)))
        room = [balance.available, *(limit.left for limit in limits)]
        if policy.max_per_authorization:
            room.append(policy.max_per_authorization)
        refusals = []
        if amount:
            if amount > balance.available:
                refusals.append(f"INSUFFICIENT_FUNDS: {amount} is above the "
                                f"{balance.available} available")
            if policy.max_per_authorization and amount > policy.max_per_authorization:
                refusals.append(f"POLICY_AMOUNT_ABOVE_MAX: {amount} is above the maximum "
                                f"per job, {policy.max_per_authorization}")
            refusals += [f"SPEND_LIMIT_EXCEEDED: {amount} is above the {limit.left} left "
                         f"of the {limit.period} limit {limit.limit}"
                         for limit in limits if amount > limit.left]
            if policy.approvals.threshold and amount > policy.approvals.threshold:
                refusals.append(f"APPROVAL_NEEDED: above {policy.approvals.threshold}, the "
                                f"owner must approve first (run_job returns "
                                f"waiting_for_owner)")
        return results.SpendStatus(
            wallet_id=status.wallet_id, available=balance.available, pending=balance.pending,
            spent_today=status.spent_today, spent_this_month=status.spent_this_month,
            limits=limits, max_per_job=policy.max_per_authorization,
            approval_above=policy.approvals.threshold, can_spend_now=max(0, min(room)),
            refills_paused=status.refills_paused, would_refuse=refusals)

    async def list_receipts(self, limit: Annotated[int, Field(ge=1, le=100, description=(
            "How many of the newest receipts."))] = 10) -> results.Receipts:
        """The wallet's newest receipts: what each settled job was charged, with its
        usage and prices. Free."""
        found = await self._call(self.client.list_receipts, page_size=limit, limit=limit)
        return results.Receipts(receipts=[results.receipt(r) for r in found])

    async def get_receipt(self, authorization_id: AuthorizationId) -> results.Receipt:
        """The broker's signed receipt of one job (by the authorization_id run_job
        returned): charged, released, usage, prices. Free."""
        return results.receipt(await self._call(self.client.get_receipt, authorization_id))

    async def cancel_authorization(self, authorization_id: AuthorizationId) -> results.Cancelled:
        """Cancel a reservation whose job has not started (for example one that was
        approved but is no longer wanted): its whole amount goes back to the wallet and
        its voucher becomes useless. A job that started cannot be cancelled here."""
        auth = await self._call(self.client.cancel, authorization_id,
                                what="The reservation was not cancelled")
        return results.Cancelled(authorization_id=auth.authorization_id,
                                 state=_state_name(auth.state), released=auth.amount)

    async def wait_for_approval(
            self, authorization_id: AuthorizationId,
            timeout_seconds: Annotated[int, Field(ge=1, le=3600, description=(
                "How long to wait for the owner's decision."))] = 60) -> results.Approval:
        """Wait for the owner to approve or deny a job that run_job left waiting_for_owner.
        Returns the decision (approved, denied, expired) or pending when timeout_seconds
        passed first (call again to keep waiting, or cancel_authorization). Once
        approved, call run_job again with the job's request_id to run it. Free."""
        try:
            found = await anyio.to_thread.run_sync(
                self.client.wait_for_approval, authorization_id, float(timeout_seconds))
        except BrokerClientError as error:
            raise tool_error(error) from None
        if not found.HasField("approval"):
            return results.Approval(authorization_id=authorization_id, decision="not_needed",
                                    reason="", deadline="", message="This authorization "
                                    "never needed the owner's approval.")
        approval = found.approval
        decision = DECISION.get(approval.state, "pending")
        message = {"pending": "The owner has not decided yet. Call wait_for_approval "
                   "again, or cancel_authorization to give up.",
                   "approved": "Approved. Call run_job again with the same request_id to "
                   "run the job.",
                   "denied": "The owner denied it; nothing is reserved. Do not retry it "
                   "unchanged.",
                   "expired": "The owner did not answer in time; nothing is reserved."}
        return results.Approval(authorization_id=authorization_id, decision=decision,
                                reason=approval.reason,
                                deadline=results.when(approval.deadline),
                                message=message[decision])


def _job(kind: str, model: str, prompt: str, max_new_tokens: int,
         duration_ms: int) -> tuple[worker_pb.Job, dict]:
    """The worker's job and the quote's estimate for it; a ToolError for a job that
    cannot run."""
    if kind == "generate":
        if not model or not prompt:
            raise ToolError("INVALID_ARGUMENT: a generate job needs model and prompt. "
                            "Nothing was reserved or spent.")
        if not prompt.isascii() or not prompt.isprintable():
            raise ToolError("INVALID_ARGUMENT: the prompt must be printable ASCII. "
                            "Nothing was reserved or spent.")
        job = worker_pb.Job(generate=worker_pb.GenerateJob(
            model=model, prompt=prompt, max_new_tokens=max_new_tokens))
    else:
        if duration_ms < 1:
            raise ToolError("INVALID_ARGUMENT: a burn job needs duration_ms of at least 1. "
                            "Nothing was reserved or spent.")
        job = worker_pb.Job(burn=worker_pb.BurnJob(duration_ms=duration_ms))
    return job, _job_estimate(kind, model, len(prompt), max_new_tokens, duration_ms)


def _job_estimate(kind: str, model: str, input_tokens: int, max_new_tokens: int,
                  duration_ms: int) -> dict:
    """The quote's job description (the worker counts one token per prompt character)."""
    if kind == "generate":
        return {"models": [model] if model else [], "input_tokens": input_tokens,
                "output_tokens": max_new_tokens}
    return {"gpu_ms": duration_ms}


def _ran(authorization_id: str) -> str:
    return (f"The job ran and was charged once; get_receipt('{authorization_id}') shows "
            f"the charge")


def _state_name(state: int) -> str:
    return auth_pb.AuthorizationState.Name(state).removeprefix("AUTHORIZATION_STATE_").lower()


def _outcome(request_id: str, max_spend: int, auth: auth_pb.Authorization, status: str, *,
             message: str) -> results.JobResult:
    return results.JobResult(status=status, request_id=request_id,
                             authorization_id=auth.authorization_id, output="", charged=0,
                             max_spend=max_spend, released=0, receipt_id="", worker_id="",
                             usage={}, error="", message=message)


def _settled(request_id: str, max_spend: int, auth: auth_pb.Authorization, receipt, output: str,
             worker_id: str, status: str, message: str, error: str = "") -> results.JobResult:
    return results.JobResult(status=status, request_id=request_id,
                             authorization_id=auth.authorization_id, output=output,
                             charged=receipt.charged, max_spend=max_spend,
                             released=receipt.released, receipt_id=receipt.receipt_id,
                             worker_id=worker_id, usage=results.usage(receipt.usage),
                             error=error, message=message)


def _strict(tool: Tool) -> Tool:
    """Refuse arguments outside the tool's schema (the SDK would drop them silently, and
    a misspelt limit must not pass unnoticed); the schema says so too."""
    lenient = tool.fn_metadata.arg_model
    tool.fn_metadata.arg_model = type(lenient.__name__, (lenient,),
                                      {"model_config": ConfigDict(extra="forbid")})
    tool.parameters["additionalProperties"] = False
    return tool


def build_server(client: BrokerClient, *, job_timeout: float = 300.0) -> MCPServer:
    """The MCP server with this agent's tools."""
    t = AgentTools(client, job_timeout=job_timeout)
    free = ToolAnnotations(readOnlyHint=True, openWorldHint=True)
    pays = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True,
                           openWorldHint=True)
    releases = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True,
                               openWorldHint=True)
    tools = [(t.find_offers, "Find offers and quote a job", free),
             (t.run_job, "Run a job and pay for it", pays),
             (t.get_spend_status, "Balance and spend limits", free),
             (t.list_receipts, "Newest receipts", free),
             (t.get_receipt, "One receipt", free),
             (t.cancel_authorization, "Cancel a reservation", releases),
             (t.wait_for_approval, "Wait for the owner's approval", free)]
    return MCPServer("broker-mcp", instructions=INSTRUCTIONS, tools=[
        _strict(Tool.from_function(fn, title=title, annotations=annotations,
                                   description=" ".join(fn.__doc__.split())))
        for fn, title, annotations in tools])
