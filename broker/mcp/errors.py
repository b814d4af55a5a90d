"""Broker and worker errors as MCP tool errors a model can act on.

Each message names the ErrorInfo reason (or the gRPC code when there is none, e.g. a
broker or worker that cannot be reached), repeats the broker's own explanation, and
says what the agent can do next. Nothing here ever includes an API key or a voucher:
the broker's messages never contain them, and this module adds none."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from ..client import BrokerClientError

# What an agent can do about each refusal it may meet. Reasons not listed fall back to
# the advice for their gRPC code (BY_CODE).
NEXT_STEP = {
    "INSUFFICIENT_FUNDS": "the wallet does not hold that much; call get_spend_status for "
                          "what is available, and lower max_spend or wait for a refill",
    "SPEND_LIMIT_EXCEEDED": "a spend limit of the owner's policy would be crossed; call "
                            "get_spend_status for what is left, lower max_spend or wait "
                            "for the period to end",
    "SPEND_VELOCITY_EXCEEDED": "too much spend in the last minute; wait a minute and retry",
    "RATE_LIMITED": "too many requests; wait a few seconds and retry",
    "POLICY_AMOUNT_ABOVE_MAX": "max_spend is above the policy's maximum per job; lower it",
    "POLICY_MODEL_NOT_ALLOWED": "the owner's policy does not allow this model; pick another",
    "POLICY_RESOURCE_CLASS_NOT_ALLOWED": "the owner's policy does not allow this hardware",
    "POLICY_WORKER_NOT_ALLOWED": "the owner's policy does not allow this worker; pick "
                                 "another worker_id or leave it empty",
    "POLICY_PRICE_ABOVE_MAX": "the offer's prices are above the owner's price caps",
    "WALLET_FROZEN": "the owner froze the wallet; nothing can be spent until they unfreeze "
                     "it. Tell the user",
    "API_KEY_REVOKED": "this server's API key was revoked; ask the owner for a new agent "
                       "key and restart broker-mcp with it",
    "API_KEY_INVALID": "this server's API key is unknown to the broker; ask the owner for "
                       "a valid agent key",
    "API_KEY_MISSING": "broker-mcp was started without an API key; restart it with one",
    "ROLE_NOT_ALLOWED": "this server's key is not an agent key; restart broker-mcp with "
                        "the agent's key",
    "MODEL_NOT_FOUND": "no worker serves this model; call find_offers with another model",
    "MODEL_NOT_AVAILABLE": "that worker does not serve this model; call find_offers",
    "NO_ELIGIBLE_OFFER": "no live offer fits max_spend and the latency target; raise "
                         "max_spend or relax the target",
    "OFFER_NOT_IN_QUOTE": "that worker_id is not among the live offers; call find_offers",
    "QUOTE_EXPIRED": "the locked prices expired; run the job again with a new request_id",
    "REQUEST_ID_REUSED": "this request_id was used for a different job; use a new "
                         "request_id for a new job",
    "AUTHORIZATION_NOT_FOUND": "no such authorization of this agent; check the id",
    "AUTHORIZATION_NOT_CANCELLABLE": "only an authorization whose job has not started can "
                                     "be cancelled",
    "RECEIPT_NOT_FOUND": "no receipt with that id for this agent; call list_receipts",
    "RECEIPT_NOT_READY": "the job has not settled yet; try get_receipt again shortly",
    "APPROVAL_NOT_FOUND": "that authorization never needed the owner's approval",
    "VOUCHER_ALREADY_REDEEMED": "the job already started with this authorization; call "
                                "get_receipt with its authorization id",
    "VOUCHER_EXPIRED": "the authorization expired before the job started; nothing was "
                       "spent. Run the job again with a new request_id",
    "WORKER_BUSY": "the worker is busy; nothing was spent. Retry later or pick another "
                   "worker_id from find_offers",
    "WORKER_DRAINING": "the worker is shutting down; nothing was spent. Pick another "
                       "worker_id from find_offers",
    "BROKER_UNAVAILABLE": "the worker cannot reach the broker; nothing was spent. Retry "
                          "later",
    "SHUTTING_DOWN": "the broker is restarting; retry in a few seconds",
    "JOB_INVALID": "the job's arguments are out of range; fix them",
}

BY_CODE = {
    "INVALID_ARGUMENT": "fix the arguments named above",
    "UNAUTHENTICATED": "this server's API key is not accepted; ask the owner for a new "
                       "agent key",
    "PERMISSION_DENIED": "the owner's policy or this key does not allow it",
    "NOT_FOUND": "check the id",
    "FAILED_PRECONDITION": "the state does not allow it now; see the message",
    "RESOURCE_EXHAUSTED": "a limit was reached; wait and retry, or spend less",
    "UNAVAILABLE": "it could not be reached; retry in a little while",
    "DEADLINE_EXCEEDED": "it did not answer in time; retry in a little while",
}


def tool_error(error: BrokerClientError, *, what: str = "", spent: str = "") -> ToolError:
    """A ToolError for the model: `REASON (CODE): the broker's message. what. spent.
    Next: ...`. `what` says which call failed, `spent` what happened to the money."""
    code = error.code.name
    label = f"{error.reason} ({code})" if error.reason else code
    details = error.details or "no details"
    advice = NEXT_STEP.get(error.reason) or BY_CODE.get(code, "see the message")
    parts = [f"{label}: {details}", what, spent, f"Next: {advice}."]
    return ToolError(" ".join(p.rstrip(".") + "." for p in parts if p))
