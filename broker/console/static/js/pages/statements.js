// Statements as CSV: totals per wallet and payment model for each hour or day of a
// range, and the whole range's total from one broker-signed statement.

import { h, replace } from "../dom.js";

const iso = (date) => date.toISOString().slice(0, 10);

export async function render(root) {
  const today = new Date();
  const start = h("input", { type: "date", id: "statement-start", value: iso(new Date(today.getTime() - 6 * 86400000)), required: true });
  const end = h("input", { type: "date", id: "statement-end", value: iso(today), required: true });
  const granularity = h("select", { id: "statement-granularity" },
    h("option", { value: "day" }, "days"), h("option", { value: "hour" }, "hours"));
  const link = h("a", { class: "button primary", id: "statement-download", download: "" }, "Download CSV");
  const update = () => {
    const query = new URLSearchParams({ start: start.value, end: end.value, granularity: granularity.value });
    link.setAttribute("href", `/api/statement.csv?${query}`);
  };
  for (const input of [start, end, granularity]) input.addEventListener("change", update);
  update();
  replace(root, h("h2", {}, "Statements"),
    h("p", {}, "Totals only (per wallet and per payment model), never line items; times in UTC, both days included."),
    h("div", { class: "form-row" },
      h("label", { for: "statement-start" }, "From"), start,
      h("label", { for: "statement-end" }, "to"), end,
      h("label", { for: "statement-granularity" }, "in"), granularity, link));
}
