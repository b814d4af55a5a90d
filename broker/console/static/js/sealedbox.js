// Opening a libsodium sealed box (crypto_box_seal) in the browser, with the owner's
// private receipt key from a file the user picks. The key never leaves this page: it
// is read here, used here and dropped.
//
// A sealed box is ephemeral_pk (32 bytes) || crypto_box(message, nonce, recipient_pk,
// ephemeral_sk) with nonce = BLAKE2b-192(ephemeral_pk || recipient_pk). TweetNaCl
// (vendored, global `nacl`) has crypto_box; BLAKE2b is below (RFC 7693, with BigInt).

const nacl = globalThis.nacl;
const M64 = (1n << 64n) - 1n;
const IV = [
  0x6a09e667f3bcc908n, 0xbb67ae8584caa73bn, 0x3c6ef372fe94f82bn, 0xa54ff53a5f1d36f1n,
  0x510e527fade682d1n, 0x9b05688c2b3e6c1fn, 0x1f83d9abfb41bd6bn, 0x5be0cd19137e2179n,
];
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

const rotr = (x, n) => ((x >> n) | (x << (64n - n))) & M64;

function mix(v, a, b, c, d, x, y) {
  v[a] = (v[a] + v[b] + x) & M64;
  v[d] = rotr(v[d] ^ v[a], 32n);
  v[c] = (v[c] + v[d]) & M64;
  v[b] = rotr(v[b] ^ v[c], 24n);
  v[a] = (v[a] + v[b] + y) & M64;
  v[d] = rotr(v[d] ^ v[a], 16n);
  v[c] = (v[c] + v[d]) & M64;
  v[b] = rotr(v[b] ^ v[c], 63n);
}

function compress(h, block, counted, last) {
  const v = [...h, ...IV];
  v[12] ^= BigInt(counted) & M64;
  v[13] ^= BigInt(counted) >> 64n;
  if (last) v[14] ^= M64;
  const m = [];
  for (let i = 0; i < 16; i++) {
    let word = 0n;
    for (let j = 7; j >= 0; j--) word = (word << 8n) | BigInt(block[i * 8 + j]);
    m.push(word);
  }
  for (let round = 0; round < 12; round++) {
    const s = SIGMA[round % 10];
    mix(v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
    mix(v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
    mix(v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
    mix(v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
    mix(v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
    mix(v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
    mix(v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
    mix(v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
  for (let i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

// Unkeyed BLAKE2b with an output of `outlen` bytes (1 to 64).
export function blake2b(input, outlen) {
  const h = [...IV];
  h[0] ^= 0x01010000n ^ BigInt(outlen);
  const blocks = Math.max(1, Math.ceil(input.length / 128));
  for (let i = 0; i < blocks; i++) {
    const block = new Uint8Array(128);
    block.set(input.subarray(i * 128, (i + 1) * 128));
    const last = i === blocks - 1;
    compress(h, block, last ? input.length : (i + 1) * 128, last);
  }
  const out = new Uint8Array(outlen);
  for (let i = 0; i < outlen; i++) out[i] = Number((h[i >> 3] >> BigInt(8 * (i & 7))) & 0xffn);
  return out;
}

export class SealError extends Error {}

// The private key in a key file from `broker receipts keygen`: 32 bytes in hex.
export function parseKeyFile(text) {
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    throw new SealError("This file does not hold a receipt key (64 hex digits, as " +
      "`broker receipts keygen` writes).");
  }
  const key = new Uint8Array(32);
  for (let i = 0; i < 32; i++) key[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return key;
}

export function publicKeyOf(secretKey) {
  return nacl.scalarMult.base(secretKey);
}

// "rk_" + the first 16 hex digits of SHA-256(public key), as the broker names keys.
export async function receiptKeyId(publicKey) {
  if (!globalThis.crypto?.subtle) return "";
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", publicKey));
  return "rk_" + [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export function openSealedBox(sealed, secretKey) {
  if (sealed.length < 32 + nacl.box.overheadLength) return null;
  const ephemeral = sealed.subarray(0, 32);
  const recipient = publicKeyOf(secretKey);
  const both = new Uint8Array(64);
  both.set(ephemeral);
  both.set(recipient, 32);
  return nacl.box.open(sealed.subarray(32), blake2b(both, 24), ephemeral, secretKey);
}

const PREFIX = '{"document":';

// The signed document inside a receipt's sealed part, its broker signature checked
// against the broker's receipt-signing keys ({key_id: Uint8Array}). The envelope is
// canonical JSON with sorted keys, so the document's canonical bytes (what was signed)
// are the text between '{"document":' and ',"key_id":' (ASCII: one byte a character).
export function openDocument(sealed, secretKey, signingKeys) {
  const plain = openSealedBox(sealed, secretKey);
  if (plain === null) throw new SealError("This key does not open it: it was sealed to another receipt key.");
  const text = new TextDecoder().decode(plain);
  const envelope = JSON.parse(text);
  const end = text.lastIndexOf(',"key_id":');
  if (!text.startsWith(PREFIX) || end < 0) throw new SealError("The sealed part is not a signed document.");
  const signed = plain.subarray(PREFIX.length, end);
  const key = signingKeys[envelope.key_id];
  if (!key) throw new SealError(`Signed by an unknown broker key ${envelope.key_id}.`);
  if (!nacl.sign.detached.verify(signed, fromBase64(envelope.signature), key)) {
    throw new SealError("The broker's signature on the sealed part does not verify.");
  }
  return envelope.document;
}

// Labels sealed at Authorize (the owner had a receipt key then) ride in the itemised part
// still sealed, as their own sealed box of {"labels": ...}: open them with the same key.
// Left sealed when they were sealed to a key the owner has since replaced.
export function withLabelsOpened(doc, secretKey) {
  if (!doc.sealed_labels) return doc;
  const plain = openSealedBox(fromBase64(doc.sealed_labels), secretKey);
  if (plain === null) return doc;
  const { sealed_labels: _, ...rest } = doc;
  return { ...rest, labels: JSON.parse(new TextDecoder().decode(plain)).labels };
}

export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export function toBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}
