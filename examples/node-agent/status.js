'use strict';
// Failed calls carry a google.rpc.Status in the `grpc-status-details-bin` trailer
// (AIP-193, docs/wire.md): an ErrorInfo with a stable reason, and BadRequest, RetryInfo
// or QuotaFailure where they apply (docs/errors.md). Their definitions are the ones
// shipped in protos/google/rpc.

const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const GOOGLE_RPC = path.resolve(__dirname, '..', '..', 'protos', 'google', 'rpc');
// protobufjs carries google/protobuf/{any,duration}.proto itself.
const root = new protobuf.Root().loadSync(['status.proto', 'error_details.proto']
  .map((name) => path.join(GOOGLE_RPC, name)), { keepCase: true });

const Status = root.lookupType('google.rpc.Status');
const DETAIL_TYPES = ['ErrorInfo', 'BadRequest', 'RetryInfo', 'QuotaFailure'];

const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, number]) => [number, name]));

/** The details of a failed call by short type name, e.g. {ErrorInfo: {...}}. */
function statusDetails(error) {
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return {};
  const status = Status.toObject(Status.decode(raw), { longs: Number });
  const found = {};
  for (const any of status.details || []) {
    const name = DETAIL_TYPES.find((t) => any.type_url.endsWith(`/google.rpc.${t}`));
    if (name) {
      const type = root.lookupType(`google.rpc.${name}`);
      found[name] = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    }
  }
  return found;
}

/** A gRPC error as lines of text: code, message, then each detail it carries. */
function describeError(error) {
  if (typeof error.code !== 'number' || !(error.code in CODE_NAMES)) {
    return [String(error && error.message ? error.message : error)];
  }
  const lines = [`${CODE_NAMES[error.code]} (${error.code}): ${error.details}`];
  const { ErrorInfo, BadRequest, RetryInfo, QuotaFailure } = statusDetails(error);
  if (ErrorInfo) {
    const meta = Object.entries(ErrorInfo.metadata || {}).map(([k, v]) => `${k}=${v}`);
    lines.push(`reason ${ErrorInfo.reason} (domain ${ErrorInfo.domain})` +
      (meta.length ? ` ${meta.join(' ')}` : ''));
  }
  for (const v of BadRequest ? BadRequest.field_violations : []) {
    lines.push(`invalid field ${v.field}: ${v.description}`);
  }
  if (RetryInfo && RetryInfo.retry_delay) {
    const ms = RetryInfo.retry_delay.seconds * 1000 + Math.round(RetryInfo.retry_delay.nanos / 1e6);
    lines.push(`retry after ${ms} ms`);
  }
  for (const v of QuotaFailure ? QuotaFailure.violations : []) {
    lines.push(`quota ${v.subject}: ${v.description}`);
  }
  return lines;
}

module.exports = { describeError, statusDetails };
