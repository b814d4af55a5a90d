// A stacked bar chart in plain SVG: one bar per period, one segment per series
// (wallet or payment model). Heights only are computed in floating point; every
// figure shown (axis, tooltips, the table) is exact, from the micro-credit strings.

import { h } from "./dom.js";
import { approx, credits } from "./money.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 760, HEIGHT = 240, LEFT = 86, BOTTOM = 28, TOP = 10;
const PALETTE = 8;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function label(iso, granularity) {
  return granularity === "hour" ? iso.slice(11, 16) : iso.slice(5, 10);
}

// periods: [{start, end, total_charged, wallets: {id: micro}, payment_models: {...}}]
// by: "wallets" or "payment_models"; names: {id: display name}.
export function spendChart(periods, by, names, granularity) {
  const keys = [...new Set(periods.flatMap((p) => Object.keys(p[by])))].sort();
  const nameOf = (key) => (by === "wallets" ? names[key] || key : key);
  const max = periods.reduce((m, p) => (BigInt(p.total_charged) > m ? BigInt(p.total_charged) : m), 0n);
  const scale = max > 0n ? (HEIGHT - TOP - BOTTOM) / approx(max) : 0;
  const slot = (WIDTH - LEFT) / Math.max(1, periods.length);
  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img",
    "aria-label": `Charged per ${granularity}, ${by === "wallets" ? "per wallet" : "per payment model"}`,
  });
  for (let i = 0; i <= 4; i++) {
    const value = (max * BigInt(i)) / 4n;
    const y = HEIGHT - BOTTOM - approx(value) * scale;
    svg.append(s("line", { x1: LEFT, x2: WIDTH, y1: y, y2: y, class: "grid" }));
    svg.append(s("text", { x: LEFT - 6, y: y + 4, class: "axis", "text-anchor": "end" }, credits(value)));
  }
  const every = granularity === "hour" ? 3 : 5;
  periods.forEach((period, i) => {
    const x = LEFT + i * slot + slot * 0.15;
    let y = HEIGHT - BOTTOM;
    keys.forEach((key, k) => {
      const micro = period[by][key];
      if (!micro || BigInt(micro) === 0n) return;
      const height = Math.max(1, approx(micro) * scale);
      y -= height;
      svg.append(s("rect", { x, y, width: slot * 0.7, height, class: `series-${k % PALETTE}` },
        s("title", {}, `${nameOf(key)}: ${credits(micro)} credits, ${label(period.start, granularity)}`)));
    });
    if (i % every === 0) {
      svg.append(s("text", { x: x + slot * 0.35, y: HEIGHT - 8, class: "axis", "text-anchor": "middle" },
        label(period.start, granularity)));
    }
  });
  const legend = h("ul", { class: "legend" }, keys.map((key, k) =>
    h("li", {}, h("span", { class: `swatch series-${k % PALETTE}`, "aria-hidden": "true" }), nameOf(key))));
  const rows = periods.filter((p) => BigInt(p.total_charged) > 0n).map((p) =>
    h("tr", {}, h("td", {}, p.start.replace("T", " ").replace(/:00Z$/, " UTC")),
      keys.map((key) => h("td", { class: "num" }, credits(p[by][key] || "0"))),
      h("td", { class: "num" }, credits(p.total_charged))));
  const data = h("details", {}, h("summary", {}, "Show the figures as a table"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Period"),
      keys.map((key) => h("th", {}, nameOf(key))), h("th", {}, "Total"))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: keys.length + 2 }, "Nothing charged in this range.")))));
  return h("div", { class: "chart-box" }, svg, legend, data);
}
