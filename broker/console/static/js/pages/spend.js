// Spend over time, from the broker's statements: per wallet or per payment model,
// by hour (the last 24) or by day (the last 30).

import * as api from "../api.js";
import { spendChart } from "../chart.js";
import { h, replace } from "../dom.js";

const view = { granularity: "hour", by: "wallets" };

function toggle(name, options, ctxRender) {
  return h("div", { class: "toggle", role: "group", "aria-label": name },
    options.map(([value, text, key]) => h("button", {
      type: "button", "aria-pressed": String(view[key] === value),
      onclick: () => { view[key] = value; ctxRender(); },
    }, text)));
}

export async function render(root, ctx) {
  const series = await api.get(`/api/spend?granularity=${view.granularity}`);
  const redraw = () => render(root, ctx).catch(ctx.fail);
  replace(root,
    h("h2", {}, "Spend"),
    h("div", { class: "controls" },
      toggle("Period", [["hour", "By hour (24 h)", "granularity"], ["day", "By day (30 days)", "granularity"]], redraw),
      toggle("Series", [["wallets", "Per wallet", "by"], ["payment_models", "Per payment model", "by"]], redraw)),
    spendChart(series.periods, view.by, series.wallet_names, series.granularity),
    h("p", { class: "muted" }, "Charged amounts of settled jobs, from the broker's signed statements (UTC)."));
}
