'use strict';
// Checks of what the broker and the worker hand an agent, written from docs/wire.md
// alone: the voucher, the receipt's signature and sums, the fee split, and the
// worker's signed usage. Each function throws VerifyError on the first mismatch.

const crypto = require('node:crypto');

// Raw 32-byte Ed25519 public keys become SPKI DER with this prefix (docs/wire.md).
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const USAGE_FIELDS = ['gpu_ms', 'input_tokens', 'output_tokens', 'calls', 'energy_mj'];
const MAX_VOUCHER_LENGTH = 4096;

class VerifyError extends Error {}

function publicKey(raw) {
  if (!Buffer.isBuffer(raw) || raw.length !== 32) {
    throw new VerifyError('an Ed25519 public key must be 32 raw bytes');
  }
  return crypto.createPublicKey({
    key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki',
  });
}

function ed25519(message, signature, raw) {
  return Buffer.isBuffer(signature) && signature.length === 64 &&
    crypto.verify(null, message, publicKey(raw), signature);
}

/** `keys`: [{key_id, public_key}] as ListVoucherKeys or ListReceiptSigningKeys return them. */
function keyFor(keys, keyId, what) {
  const key = keys.find((k) => k.key_id === keyId);
  if (!key) throw new VerifyError(`${what} is signed with unknown key ${keyId}`);
  return key.public_key;
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

function base64url(text, what) {
  if (!BASE64URL.test(text) || text.length % 4 === 1) {
    throw new VerifyError(`${what} is not base64url`);
  }
  return Buffer.from(text, 'base64url');
}

/** The claims of a voucher token: format, key, signature and expiry checked. */
function verifyVoucher(token, keys, nowMs) {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_VOUCHER_LENGTH ||
      !/^[\x20-\x7e]*$/.test(token)) {
    throw new VerifyError('the voucher is not 1-4096 ASCII characters');
  }
  const parts = token.split('.');
  if (parts.length !== 4) throw new VerifyError('the voucher does not have four parts');
  const [version, keyId, claimsText, signatureText] = parts;
  if (version !== 'v1') throw new VerifyError(`voucher version ${version} is not v1`);
  const signature = base64url(signatureText, 'the voucher signature');
  if (signature.toString('base64url') !== signatureText) {
    throw new VerifyError('the voucher signature is not canonical base64url');
  }
  // The signature covers the first three parts as they stand in the token.
  const signed = Buffer.from(`${version}.${keyId}.${claimsText}`, 'ascii');
  if (!ed25519(signed, signature, keyFor(keys, keyId, 'the voucher'))) {
    throw new VerifyError('the voucher signature does not verify');
  }
  const claims = JSON.parse(base64url(claimsText, 'the voucher claims').toString('utf8'));
  for (const name of ['vid', 'amt', 'iat', 'exp', 'scope']) {
    if (!(name in claims)) throw new VerifyError(`the voucher has no ${name} claim`);
  }
  if (nowMs >= claims.exp) throw new VerifyError('the voucher has expired');
  return { ...claims, key_id: keyId };
}

function sameInt(a, b) {
  return BigInt(a) === BigInt(b);
}

/** The receipt's signed outward part, checked against the broker's keys and the message. */
function verifyReceipt(receipt, keys) {
  const payload = receipt.signed_payload;
  if (!ed25519(payload, receipt.signature, keyFor(keys, receipt.key_id, 'the receipt'))) {
    throw new VerifyError(`receipt ${receipt.receipt_id} has a bad signature`);
  }
  const signed = JSON.parse(payload.toString('utf8'));
  if (signed.type !== 'receipt' || signed.receipt_id !== receipt.receipt_id) {
    throw new VerifyError('the signed payload is not this receipt');
  }
  for (const name of ['held', 'charged', 'released', 'worker_payout', 'platform_fee']) {
    if (!sameInt(signed[name], receipt[name])) {
      throw new VerifyError(`receipt ${name} ${receipt[name]} is not the signed ${signed[name]}`);
    }
  }
  const [held, charged, released] = [signed.held, signed.charged, signed.released].map(BigInt);
  if (BigInt(signed.worker_payout) + BigInt(signed.platform_fee) !== charged) {
    throw new VerifyError('worker payout + platform fee is not the charge');
  }
  if (charged + released !== held || charged > held) {
    throw new VerifyError('charged + released is not the hold');
  }
  return signed;
}

/** platform_fee = floor(charged * fee_bps / 10000); the worker gets the rest. */
function verifyFee(signedReceipt, feeBps) {
  const charged = BigInt(signedReceipt.charged);
  const fee = (charged * BigInt(feeBps)) / 10000n; // BigInt division floors for >= 0
  if (fee !== BigInt(signedReceipt.platform_fee) ||
      charged - fee !== BigInt(signedReceipt.worker_payout)) {
    throw new VerifyError(`the fee ${signedReceipt.platform_fee} is not ${fee}` +
      ` (${feeBps} bps of ${charged})`);
  }
  return fee;
}

/**
 * The worker's signed final usage: signature by its usage key, and the usage it states.
 * `batch` (Receipt.worker_usage_batch), when not empty: the usage came in a MeterWorker
 * batch signed as a whole; the signature is over the batch, which must list the hex
 * SHA-256 of the payload (docs/wire.md).
 */
function verifyWorkerUsage(payload, signature, usagePublicKey, usage, batch) {
  if (!payload || payload.length === 0) throw new VerifyError('the usage is not signed');
  const batched = Buffer.isBuffer(batch) && batch.length > 0;
  if (!ed25519(batched ? batch : payload, signature, usagePublicKey)) {
    throw new VerifyError("the worker's usage signature does not verify");
  }
  if (batched) {
    let listed;
    try {
      listed = JSON.parse(batch.toString('utf8')).reports;
    } catch {
      listed = undefined;
    }
    const digest = crypto.createHash('sha256').update(payload).digest('hex');
    if (!Array.isArray(listed) || !listed.includes(digest)) {
      throw new VerifyError('the signed batch does not list the usage');
    }
  }
  const report = JSON.parse(payload.toString('utf8'));
  if (report.final !== true) throw new VerifyError('the signed usage is not the final report');
  for (const name of USAGE_FIELDS) {
    if (usage && !sameInt(report.usage[name], usage[name])) {
      throw new VerifyError(`usage ${name} ${usage[name]} is not the signed ${report.usage[name]}`);
    }
  }
  return report;
}

/** charge = ceil((gpu_ms*gpu + in*in_1k + out*out_1k) / 1000) + calls*call, capped at hold. */
function chargeFor(usage, prices, held) {
  const n = (name) => BigInt(usage[name] || 0);
  const p = (name) => BigInt(prices[name] || 0);
  const perThousand = n('gpu_ms') * p('gpu_second_price') +
    n('input_tokens') * p('input_tokens_1k_price') +
    n('output_tokens') * p('output_tokens_1k_price');
  const charge = (perThousand + 999n) / 1000n + n('calls') * p('call_price');
  return charge < BigInt(held) ? charge : BigInt(held);
}

module.exports = {
  VerifyError, verifyVoucher, verifyReceipt, verifyFee, verifyWorkerUsage, chargeFor,
};
