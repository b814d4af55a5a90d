// The keys an owner manages: the receipt key that sealed receipts are sealed to. A new
// pair is made here, in the browser; the private key goes only into the file saved
// on this computer, and only the public key is sent to the broker.

import * as api from "../api.js";
import { actionButton, h, replace, when } from "../dom.js";
import * as sealed from "../sealedbox.js";

function saveKeyFile(secretKey, name) {
  const hex = [...secretKey].map((b) => b.toString(16).padStart(2, "0")).join("");
  const url = URL.createObjectURL(new Blob([hex + "\n"], { type: "application/octet-stream" }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function render(root, ctx) {
  const redraw = () => render(root, ctx).catch(ctx.fail);
  if (ctx.session.role !== "owner") {
    replace(root, h("h2", {}, "Keys"), h("p", {}, "Only an owner key manages the receipt key."));
    return;
  }
  const { receipt_key: current } = await api.get("/api/receipt-key");
  const register = async (publicKey) => {
    const { receipt_key: key } = await api.post("/api/receipt-key", { public_key: sealed.toBase64(publicKey) });
    ctx.flash(`Receipts settled from now on are sealed to ${key.key_id}.`, "ok");
    await redraw();
  };
  const picker = h("input", { type: "file", id: "register-key-file" });
  picker.addEventListener("change", async () => {
    const file = picker.files[0];
    picker.value = "";
    if (!file) return;
    try {
      const secretKey = sealed.parseKeyFile(await file.text());
      const publicKey = sealed.publicKeyOf(secretKey);
      secretKey.fill(0);
      await register(publicKey);
    } catch (error) {
      ctx.fail(error);
    }
  });
  const generate = actionButton("Make a new key pair and register it", async () => {
    try {
      const pair = globalThis.nacl.box.keyPair();
      saveKeyFile(pair.secretKey, "owner-receipt.key");
      await register(pair.publicKey);
      pair.secretKey.fill(0);
    } catch (error) {
      ctx.fail(error);
    }
  });
  replace(root, h("h2", {}, "Keys"),
    h("section", { class: "panel" }, h("h3", {}, "Receipt key"),
      current
        ? h("dl", { class: "figures" },
          h("div", {}, h("dt", {}, "Key id"), h("dd", { id: "receipt-key-id" }, current.key_id)),
          h("div", {}, h("dt", {}, "Registered"), h("dd", {}, when(current.create_time))),
          h("div", {}, h("dt", {}, "Public key"), h("dd", {}, h("code", {}, current.public_key))))
        : h("p", { id: "receipt-key-id" }, "No receipt key registered: itemised parts of receipts are not kept."),
      h("p", {}, "Replacing it seals receipts settled from then on to the new key; earlier ones stay sealed to the old key, so keep its file."),
      h("div", { class: "form-row" }, generate),
      h("div", { class: "form-row" }, h("label", { for: "register-key-file" }, "Or register the key in a file you have: "), picker)),
    h("section", { class: "panel" }, h("h3", {}, "API keys"),
      h("p", {}, "The broker's operator (an admin key) creates and revokes API keys, agents' keys included; ask them to revoke a key you suspect. Freezing a wallet (Overview) stops its agents at once.")));
}
