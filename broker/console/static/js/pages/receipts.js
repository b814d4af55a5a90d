// Receipts: the list, and one receipt with its sealed itemised part opened here, in
// the browser, with the owner's receipt key file. The key is read from the file into
// this page's memory only; it is never sent anywhere or stored.

import * as api from "../api.js";
import { h, replace, table, when } from "../dom.js";
import { credits } from "../money.js";
import * as sealed from "../sealedbox.js";

const $flash = () => document.getElementById("flash");

export async function renderList(root) {
  const data = await api.get("/api/receipts");
  const rows = data.receipts.map((r) => h("tr", { "data-receipt-id": r.receipt_id },
    h("td", {}, when(r.period_start)),
    h("td", {}, r.wallet_name || r.wallet_id),
    h("td", {}, h("a", { href: `#receipt/${encodeURIComponent(r.authorization_id)}` }, r.receipt_id)),
    h("td", { class: "num" }, credits(r.held)),
    h("td", { class: "num", "data-field": "charged" }, credits(r.charged)),
    h("td", { class: "num" }, credits(r.released)),
    h("td", {}, r.sealed_itemised ? "sealed" : h("span", { class: "muted" }, "no receipt key"))));
  replace(root, h("h2", {}, "Receipts"),
    table(["Settled in", "Wallet", "Receipt", "Held", "Charged", "Released", "Itemised part"],
      rows.length ? rows : h("tr", {}, h("td", { colspan: "7" }, "No receipts yet."))));
}

function figures(pairs) {
  return h("dl", { class: "figures" }, pairs.map(([term, value, field]) =>
    h("div", {}, h("dt", {}, term), h("dd", { "data-field": field || null }, value))));
}

// The opened document: every value shown as text, nested objects as nested lists;
// times also in UTC.
const TIMES = new Set(["authorize_ms", "open_ms", "settle_ms", "period_start_ms", "period_end_ms"]);

function documentView(value, key = "") {
  if (TIMES.has(key) && Number.isSafeInteger(value)) {
    return h("span", {}, `${value} (${when(new Date(value).toISOString())})`);
  }
  if (value === null || typeof value !== "object") return h("span", {}, String(value));
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
  return h("dl", { class: "document" }, entries.map(([k, v]) =>
    h("div", { "data-key": k }, h("dt", {}, k), h("dd", {}, documentView(v, k)))));
}

export async function renderOne(root, ctx, authorizationId) {
  const data = await api.get(`/api/receipt?authorization_id=${encodeURIComponent(authorizationId)}`);
  const r = data.receipt;
  const signingKeys = Object.fromEntries(Object.entries(data.signing_keys).map(([k, v]) => [k, sealed.fromBase64(v)]));
  const result = h("div", { id: "opened", "aria-live": "polite" });
  const picker = h("input", { type: "file", id: "receipt-key-file" });
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    picker.value = "";  // nothing of the key stays in the form
    if (!file) return;
    try {
      const secretKey = sealed.parseKeyFile(await file.text());
      const keyId = await sealed.receiptKeyId(sealed.publicKeyOf(secretKey));
      if (keyId && r.receipt_key_id && keyId !== r.receipt_key_id) {
        throw new sealed.SealError(`This key (${keyId}) does not open it: it was sealed to ${r.receipt_key_id}.`);
      }
      const doc = sealed.withLabelsOpened(
        sealed.openDocument(sealed.fromBase64(r.sealed_itemised), secretKey, signingKeys), secretKey);
      secretKey.fill(0);
      if (doc.receipt_id !== r.receipt_id) throw new sealed.SealError("The sealed part belongs to another receipt.");
      replace($flash());
      replace(result, h("h3", {}, "Itemised part (opened in this browser, broker signature verified)"), documentView(doc));
    } catch (error) {
      replace(result);
      ctx.fail(error instanceof sealed.SealError ? error : new sealed.SealError(`Cannot open it: ${error.message}`));
    }
  });
  replace(root, h("p", {}, h("a", { href: "#receipts" }, "← All receipts")),
    h("h2", {}, `Receipt ${r.receipt_id}`),
    figures([["Held", credits(r.held), "held"], ["Charged", credits(r.charged), "charged"],
      ["Worker payout", credits(r.worker_payout)], ["Platform fee", credits(r.platform_fee)],
      ["Released", credits(r.released), "released"],
      ["Settled in", `${when(r.period_start)} – ${when(r.period_end)}`],
      ["Authorization", r.authorization_id], ["Signed by", r.key_id]]),
    r.sealed_itemised
      ? h("section", { class: "panel" },
        h("h3", {}, "Sealed itemised part"),
        h("p", {}, `Sealed to your receipt key ${r.receipt_key_id}. Pick the key file (from \`broker receipts keygen\`) to open it here: the key stays in this browser.`),
        h("label", { for: "receipt-key-file" }, "Receipt key file "), picker, result)
      : h("p", { class: "muted" }, "This receipt has no sealed part: no receipt key was registered when it settled."));
}
