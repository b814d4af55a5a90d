// Alerts, newest first; new ones arrive live. Freeze or unfreeze the wallet concerned.

import * as api from "../api.js";
import { h, replace, table, when } from "../dom.js";
import { freezeButton } from "./overview.js";

const KIND = (kind) => kind.replace(/^ALERT_KIND_/, "").replaceAll("_", " ").toLowerCase();

export async function render(root, ctx) {
  const [overview, data] = await Promise.all([api.get("/api/overview"), api.get("/api/alerts")]);
  const wallets = Object.fromEntries(overview.wallets.map((w) => [w.wallet_id, w]));
  const redraw = () => render(root, ctx).catch(ctx.fail);
  const row = (alert) => {
    const wallet = wallets[alert.wallet_id];
    return h("tr", { "data-alert-id": alert.alert_id },
      h("td", {}, when(alert.create_time)),
      h("td", {}, KIND(alert.kind)),
      h("td", {}, wallet ? wallet.display_name || wallet.wallet_id : alert.wallet_id || "ledger"),
      h("td", {}, alert.message),
      h("td", { class: "num" }, `${alert.observed} / ${alert.baseline}`),
      h("td", {}, wallet ? [h("span", { class: wallet.frozen ? "badge danger" : "badge ok" }, wallet.frozen ? "Frozen" : "Active"), " ",
        freezeButton(ctx, wallet, redraw)] : ""));
  };
  const rows = data.alerts.map(row);
  replace(root, h("h2", {}, "Alerts"),
    h("p", { class: "muted" }, "Anomalies the broker saw in your wallets; new ones appear here as they are raised."),
    table(["Raised", "Kind", "Wallet", "What happened", "Seen / baseline", "Wallet state"],
      rows.length ? rows : h("tr", {}, h("td", { colspan: "6" }, "No alerts."))));
  ctx.onAlerts(redraw);
}
