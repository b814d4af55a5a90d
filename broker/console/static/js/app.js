// The console's page: sign-in, the navigation between pages (#hash routes), messages,
// and the live event stream (approvals, alerts) while signed in.

import * as api from "./api.js";
import { h, replace } from "./dom.js";
import * as alerts from "./pages/alerts.js";
import * as approvals from "./pages/approvals.js";
import * as keys from "./pages/keys.js";
import * as overview from "./pages/overview.js";
import * as receipts from "./pages/receipts.js";
import * as spend from "./pages/spend.js";
import * as statements from "./pages/statements.js";

const $ = (id) => document.getElementById(id);
const PAGES = {
  overview: (root, ctx) => overview.render(root, ctx),
  spend: (root, ctx) => spend.render(root, ctx),
  approvals: (root, ctx) => approvals.render(root, ctx),
  alerts: (root, ctx) => alerts.render(root, ctx),
  receipts: (root) => receipts.renderList(root),
  receipt: (root, ctx, arg) => receipts.renderOne(root, ctx, arg),
  statements: (root) => statements.render(root),
  keys: (root, ctx) => keys.render(root, ctx),
};

const listeners = { approvals: null, alerts: null };
let events = null;

const ctx = {
  session: null,
  flash(text, kind = "info") {
    replace($("flash"), h("p", { class: `flash ${kind}` }, text));
  },
  fail(error) {
    if (error instanceof api.ApiError && error.status === 401) {
      signedOut(error.message);
      return;
    }
    ctx.flash(error.message || String(error), "error");
  },
  onApprovals(fn) { listeners.approvals = fn; },
  onAlerts(fn) { listeners.alerts = fn; },
};

function setBadge(count) {
  const badge = $("approvals-count");
  badge.textContent = count ? String(count) : "";
  badge.hidden = !count;
}

function startEvents() {
  stopEvents();
  events = new EventSource("/api/events");
  events.addEventListener("approvals", (e) => {
    const data = JSON.parse(e.data);
    setBadge(data.approvals.length);
    listeners.approvals?.(data.approvals);
  });
  events.addEventListener("alerts", (e) => {
    const data = JSON.parse(e.data);
    for (const alert of data.alerts) ctx.flash(`New alert: ${alert.message}`, "warn");
    listeners.alerts?.(data.alerts);
  });
  events.addEventListener("signed-out", () => signedOut("Your session expired: sign in again."));
}

function stopEvents() {
  events?.close();
  events = null;
}

async function show() {
  if (!ctx.session) return;
  const [name, arg] = (location.hash.slice(1) || "overview").split("/");
  const page = PAGES[name] ? name : "overview";
  listeners.approvals = listeners.alerts = null;
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.getAttribute("href") === `#${page === "receipt" ? "receipts" : page}`;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const root = $("page");
  root.setAttribute("data-page", page);
  replace($("flash"));
  try {
    await PAGES[page](root, ctx, arg && decodeURIComponent(arg));
    $("main").focus({ preventScroll: true });
  } catch (error) {
    ctx.fail(error);
  }
}

function signedIn(session) {
  ctx.session = session;
  api.setCsrfToken(session.csrf_token);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `${session.role} of ${session.owner_id}`;
  startEvents();
  show();
}

function signedOut(message) {
  stopEvents();
  ctx.session = null;
  api.setCsrfToken("");
  $("app").hidden = true;
  $("sign-in").hidden = false;
  replace($("page"));
  if (message) ctx.flash(message, "error");
  $("api-key").focus();
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("api-key");
  const button = event.submitter || $("sign-in-button");
  button.disabled = true;
  try {
    const session = await api.post("/api/session", { api_key: input.value });
    replace($("flash"));
    signedIn(session);
  } catch (error) {
    ctx.flash(error.message, "error");
  } finally {
    input.value = "";  // the key is not kept in the page once sent
    button.disabled = false;
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api.post("/api/session/end");
  } catch {
    // signed out on the server already
  }
  signedOut("");
  ctx.flash("Signed out.", "ok");
});

window.addEventListener("hashchange", show);

api.get("/api/session").then(signedIn, () => signedOut(""));
