// Pending approvals, kept current by the live event stream: rows come and go without
// a reload, and a row being answered keeps what was typed in it.

import * as api from "../api.js";
import { actionButton, h, replace, when } from "../dom.js";
import { credits } from "../money.js";

function scopeText(scope) {
  const parts = [scope.model && `model ${scope.model}`, scope.resource_class && `class ${scope.resource_class}`,
    scope.worker_id && `worker ${scope.worker_id}`].filter(Boolean);
  return parts.length ? parts.join(", ") : "any";
}

function labelsList(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h("span", { class: "muted" }, "none");
  return h("ul", { class: "labels" }, entries.map(([k, v]) => h("li", {}, h("code", {}, k), " = ", v)));
}

function row(ctx, approval, names) {
  const reason = h("input", {
    type: "text", maxlength: "100", placeholder: "Reason (needed to deny)",
    "aria-label": `Reason for ${approval.authorization_id}`,
  });
  const decide = (approve) => async () => {
    try {
      await api.post(approve ? "/api/approvals/approve" : "/api/approvals/deny",
        { authorization_id: approval.authorization_id, reason: reason.value });
      ctx.flash(`${approve ? "Approved" : "Denied"} ${credits(approval.amount)} credits for ` +
        `${names[approval.wallet_id] || approval.wallet_id}.`, "ok");
      tr.remove();
    } catch (error) {
      ctx.fail(error);
    }
  };
  const owner = ctx.session.role === "owner";
  const tr = h("tr", { "data-authorization-id": approval.authorization_id },
    h("td", {}, when(approval.request_time)),
    h("td", {}, names[approval.wallet_id] || approval.wallet_id),
    h("td", { class: "num", "data-field": "amount" }, credits(approval.amount)),
    h("td", {}, scopeText(approval.scope)),
    h("td", {}, labelsList(approval.labels)),
    h("td", {}, when(approval.deadline)),
    h("td", { class: "decide" }, owner ? [reason,
      actionButton("Approve", decide(true), { class: "primary", "data-action": "approve" }),
      actionButton("Deny", decide(false), { class: "danger", "data-action": "deny" })]
      : h("span", { class: "muted" }, "owners decide")));
  return tr;
}

export async function render(root, ctx) {
  const [overview, first] = await Promise.all([api.get("/api/overview"), api.get("/api/approvals")]);
  const names = Object.fromEntries(overview.wallets.map((w) => [w.wallet_id, w.display_name]));
  const body = h("tbody", {});
  const empty = h("p", { class: "muted", id: "no-approvals" }, "Nothing is waiting for approval.");
  const tableEl = h("table", {}, h("thead", {}, h("tr", {},
    ["Requested", "Wallet", "Amount", "Scope", "Labels", "Denied unless answered by", ""].map((t) => h("th", { scope: "col" }, t)))), body);
  const update = (approvals) => {
    const ids = new Set(approvals.map((a) => a.authorization_id));
    for (const tr of [...body.children]) if (!ids.has(tr.dataset.authorizationId)) tr.remove();
    const shown = new Set([...body.children].map((tr) => tr.dataset.authorizationId));
    for (const approval of approvals) if (!shown.has(approval.authorization_id)) body.append(row(ctx, approval, names));
    tableEl.hidden = approvals.length === 0;
    empty.hidden = approvals.length !== 0;
  };
  replace(root, h("h2", {}, "Approvals"),
    h("p", { class: "muted" }, "Authorizations above a wallet's approval threshold wait here; the agent gets its voucher the moment you approve."),
    empty, tableEl);
  update(first.approvals);
  ctx.onApprovals(update);
}
