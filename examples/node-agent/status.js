'use strict';
// Failed calls carry a google.rpc.Status in the `grpc-status-details-bin` trailer
// (AIP-193): an ErrorInfo with a stable reason, and BadRequest, RetryInfo or
// QuotaFailure where they apply (docs/errors.md). The few message types needed to
// read it are declared here, so the agent needs no googleapis protos.

const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const root = new protobuf.Root();
protobuf.parse(`
  syntax = "proto3";
  package google.protobuf;
  message Any { string type_url = 1; bytes value = 2; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
`, root, { keepCase: true });
protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
  message RetryInfo { google.protobuf.Duration retry_delay = 1; }
  message QuotaFailure {
    message Violation { string subject = 1; string description = 2; }
    repeated Violation violations = 1;
  }
`, root, { keepCase: true });

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

module.exports = { describeError };
