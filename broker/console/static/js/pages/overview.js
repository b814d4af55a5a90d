// The treasury and every wallet: cap, refill target, posted, held, available, spend
// today and this month against the policy's limits, frozen or not.

import * as api from "../api.js";
import { actionButton, h, replace, table } from "../dom.js";
import { credits, limit } from "../money.js";

export function freezeButton(ctx, wallet, after) {
  if (ctx.session.role !== "owner") return null;
  const frozen = wallet.frozen;
  return actionButton(frozen ? "Unfreeze" : "Freeze", async () => {
    try {
      await api.post(frozen ? "/api/wallets/unfreeze" : "/api/wallets/freeze", { wallet_id: wallet.wallet_id });
      ctx.flash(`${frozen ? "Unfroze" : "Froze"} ${wallet.display_name || wallet.wallet_id}.`, "ok");
      await after();
    } catch (error) {
      ctx.fail(error);
    }
  }, { class: frozen ? "" : "danger", "data-action": frozen ? "unfreeze" : "freeze" });
}

function cell(field, value, cls = "num") {
  return h("td", { class: cls, "data-field": field }, value);
}

function againstLimit(spent, max) {
  return h("span", {}, credits(spent), h("span", { class: "muted" }, ` of ${limit(max)}`));
}

export async function render(root, ctx) {
  const data = await api.get("/api/overview");
  const redraw = () => render(root, ctx);
  const treasury = data.treasury
    ? h("dl", { class: "figures", id: "treasury" },
      h("div", {}, h("dt", {}, "Posted"), h("dd", { "data-field": "posted" }, credits(data.treasury.posted))),
      h("div", {}, h("dt", {}, "Held"), h("dd", { "data-field": "pending" }, credits(data.treasury.pending))),
      h("div", {}, h("dt", {}, "Available"), h("dd", { "data-field": "available" }, credits(data.treasury.available))))
    : h("p", { class: "muted" }, "An auditor key cannot read the treasury.");
  const rows = data.wallets.map((w) => h("tr", { "data-wallet-id": w.wallet_id },
    h("th", { scope: "row" }, h("span", { class: "name" }, w.display_name || "(no name)"),
      h("br"), h("code", { class: "muted" }, w.wallet_id)),
    cell("cap", credits(w.cap)),
    cell("refill_target", credits(w.refill_target)),
    cell("posted", credits(w.balance.posted)),
    cell("pending", credits(w.balance.pending)),
    cell("available", credits(w.balance.available)),
    cell("spent_today", againstLimit(w.spend.spent_today, w.limits.daily)),
    cell("spent_this_month", againstLimit(w.spend.spent_this_month, w.limits.monthly)),
    cell("approval_threshold", BigInt(w.approval_threshold) > 0n ? `above ${credits(w.approval_threshold)}` : "never"),
    cell("state", h("span", { class: w.frozen ? "badge danger" : "badge ok" }, w.frozen ? "Frozen" : "Active"), "state"),
    h("td", {}, freezeButton(ctx, w, redraw))));
  replace(root,
    h("h2", {}, "Overview"),
    h("p", { class: "muted" }, "All amounts in credits (1 credit = 1,000,000 micro-credits)."),
    h("h3", {}, "Treasury"), treasury,
    h("h3", {}, "Wallets"),
    rows.length
      ? table(["Wallet", "Cap", "Refill target", "Posted", "Held", "Available", "Spent today",
        "Spent this month", "Approval", "State", ""], rows)
      : h("p", {}, "No wallets yet."));
}
