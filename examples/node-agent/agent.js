#!/usr/bin/env node
'use strict';
// An agent in Node.js that buys one `generate` job, loading the broker's .proto files
// at run time (no generated code): discover the offers, authorize a hold and get a
// voucher and check it, execute the job on the worker with that voucher, fetch the
// receipt and check its signature, the fee split and the worker's signed usage
// (verify.js, from docs/wire.md), read the wallet's balance. Exits 1 on any failure, with the gRPC
// code and the ErrorInfo reason.
//
//   node agent.js [--broker 127.0.0.1:50051] [--credentials var/demo-credentials.json]
//   (--broker takes several brokers on one database, comma-separated: see brokerTarget)
//                 [--broker-order spread|listed]
//                 [--amount 200000] [--tokens 24] [--prompt TEXT] [--timeout 60]

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { describeError, statusDetails } = require('./status');
const verify = require('./verify');

const PROTO_FILES = [
  'broker/v1/worker_registry_service.proto',
  'broker/v1/authorization_service.proto',
  'broker/v1/wallet_service.proto',
  'broker/v1/statement_service.proto',
  'broker/v1/voucher_key_service.proto',
  'worker/v1/worker_service.proto',
];
class AgentError extends Error {}

function options() {
  const { values } = parseArgs({
    options: {
      broker: { type: 'string', default: '127.0.0.1:50051' },
      'broker-order': { type: 'string', default: 'spread' },
      credentials: { type: 'string', default: 'var/demo-credentials.json' },
      protos: { type: 'string', default: path.resolve(__dirname, '..', '..', 'protos') },
      model: { type: 'string', default: 'tiny-lm' },
      prompt: { type: 'string', default: 'The cheapest GPU is ' },
      tokens: { type: 'string', default: '24' },
      amount: { type: 'string', default: '200000' },
      timeout: { type: 'string', default: '60' },
    },
  });
  for (const name of ['tokens', 'amount', 'timeout']) {
    if (!/^[1-9][0-9]*$/.test(values[name])) {
      throw new AgentError(`--${name} must be a positive integer, not ${values[name]}`);
    }
  }
  if (!BROKER_ORDERS.includes(values['broker-order'])) {
    throw new AgentError(`--broker-order must be ${BROKER_ORDERS.join(' or ')},` +
      ` not ${values['broker-order']}`);
  }
  return values;
}

function loadApi(protosDir) {
  // keepCase: field names as in the .proto; int64 as decimal strings (no precision loss);
  // oneofs: `event.kind` names the member that is set.
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [protosDir], keepCase: true, longs: String, enums: String,
    defaults: true, oneofs: true,
  });
  return grpc.loadPackageDefinition(definition);
}

/** One unary call, as a promise; the error names the method that failed. */
function unaryOnce(client, method, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, reply) => {
      if (error) {
        error.method = method;
        reject(error);
      } else {
        resolve(reply);
      }
    });
  });
}

/**
 * A unary call to the broker, retried on UNAVAILABLE (a broker that went away or hung:
 * the channel moves to the next; or its database is away: RetryInfo says when to come
 * back). Safe for every call here: reads, and Authorize with its request_id (AIP-155),
 * which the broker answers at most once.
 */
async function unary(client, method, request, metadata, deadline) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await unaryOnce(client, method, request, metadata, deadline);
    } catch (error) {
      if (error.code !== grpc.status.UNAVAILABLE || attempt === 4) throw error;
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs(error, attempt)));
    }
  }
}

/** The broker's RetryInfo delay (at most 5 s) when it sent one, else 200 ms per attempt. */
function retryDelayMs(error, attempt) {
  const { RetryInfo } = statusDetails(error);
  const delay = RetryInfo && RetryInfo.retry_delay;
  const asked = delay ? delay.seconds * 1000 + Math.round(delay.nanos / 1e6) : 0;
  return asked > 0 ? Math.min(asked, 5000) : 200 * attempt;
}

const balanceText = (b) => `posted ${b.posted}, pending ${b.pending}, available ${b.available}`;
const timeText = (t) => new Date(Number(t.seconds) * 1000 + t.nanos / 1e6).toISOString();

/** Authorize, retried on UNAVAILABLE with the same request_id (AIP-155): at most one hold. */
async function authorize(auths, request, metadata, deadline) {
  return (await unary(auths, 'Authorize', request, metadata, deadline)).authorization;
}

/** Runs the job on the worker, printing tokens as they stream; returns the last events. */
function execute(worker, request, deadline) {
  return new Promise((resolve, reject) => {
    const seen = { accepted: null, usage: null, usageReports: 0, result: null };
    const call = worker.Execute(request, { deadline });
    call.on('data', (event) => {
      switch (event.kind) {
        case 'accepted':
          seen.accepted = event.accepted;
          console.log(`job ${event.accepted.job_id} accepted: budget ${event.accepted.budget},` +
            ` meter ${event.accepted.meter}`);
          process.stdout.write(request.job.generate.prompt);
          break;
        case 'output':
          process.stdout.write(event.output.text);
          break;
        case 'usage':
          seen.usage = event.usage;
          seen.usageReports += 1;
          break;
        case 'result':
          seen.result = event.result;
          break;
        default:
          break; // an event kind newer than these protos: nothing to show
      }
    });
    call.on('error', (error) => {
      error.method = 'Execute';
      reject(error);
    });
    call.on('end', () => {
      process.stdout.write('\n');
      resolve(seen);
    });
  });
}

/**
 * A broker that hangs (SIGSTOP, a frozen host) keeps its connection open: a keepalive
 * ping every 2 s, unanswered for 2 s, drops it and the call on it fails UNAVAILABLE,
 * so the retry moves on (the broker permits these pings; common/targets.py).
 */
const BROKER_CHANNEL = {
  'grpc.keepalive_time_ms': 2000,
  'grpc.keepalive_timeout_ms': 2000,
  'grpc.keepalive_permit_without_calls': 1,
};

/**
 * Which broker of a list the agent uses: 'spread' shuffles the list once (pick_first's
 * shuffleAddressList, gRFC A62), so that many agents share the brokers instead of all
 * holding to the first; 'listed' keeps its order (a preferred broker first). Either way
 * the channel keeps to the broker it connected to and fails over as above.
 */
const BROKER_ORDERS = ['spread', 'listed'];
const SPREAD_SERVICE_CONFIG = JSON.stringify(
  { loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }] });

/** One channel for every broker service, so that they all use the broker it picked. */
function brokerChannel(list, order, credentials) {
  const spread = order === 'spread' && list.includes(',');
  const options = spread ? { ...BROKER_CHANNEL, 'grpc.service_config': SPREAD_SERVICE_CONFIG }
    : BROKER_CHANNEL;
  return new grpc.Channel(brokerTarget(list), credentials, options);
}

/**
 * Several brokers on one database ("10.0.0.1:50051,10.0.0.2:50051", IP addresses) as
 * one target: grpc-js's pick_first policy connects to the first that answers and, when
 * its connection breaks, to the next one; the retry of a call (unary) then runs there.
 * One address passes through unchanged (a host name is fine there).
 */
function brokerTarget(list) {
  const addresses = list.split(',').map((address) => address.trim());
  if (addresses.length === 1) return addresses[0];
  const family = addresses.every((address) => address.startsWith('[')) ? 'ipv6' : 'ipv4';
  return `${family}:${addresses.join(',')}`;
}

async function run(opts) {
  const credentials = JSON.parse(fs.readFileSync(opts.credentials, 'utf8'));
  if (!credentials.agent_api_key) {
    throw new AgentError(`${opts.credentials} has no agent_api_key`);
  }
  const api = loadApi(opts.protos);
  const deadline = Date.now() + Number(opts.timeout) * 1000;
  const metadata = new grpc.Metadata();
  metadata.add('authorization', `Bearer ${credentials.agent_api_key}`);
  const insecure = grpc.credentials.createInsecure();
  const channel = brokerChannel(opts.broker, opts['broker-order'], insecure);
  const shared = { channelOverride: channel };
  const broker = {
    registry: new api.broker.v1.WorkerRegistryService('', insecure, shared),
    auths: new api.broker.v1.AuthorizationService('', insecure, shared),
    wallets: new api.broker.v1.WalletService('', insecure, shared),
    statements: new api.broker.v1.StatementService('', insecure, shared),
    voucherKeys: new api.broker.v1.VoucherKeyService('', insecure, shared),
  };
  let worker = null;
  try {
    const before = await unary(broker.wallets, 'GetBalance', {}, metadata, deadline);
    console.log(`wallet ${before.account_id} before: ${balanceText(before.balance)}`);

    // 1. Discover: live workers serving the model, cheapest first.
    const { offers, platform_fee_bps: feeBps } = await unary(broker.registry, 'ListOffers',
      { model: opts.model }, metadata, deadline);
    if (offers.length === 0) throw new AgentError(`no live worker offers ${opts.model}`);
    const offer = offers[0];
    const p = offer.prices;
    console.log(`offer: worker ${offer.worker_id} at ${offer.endpoint}` +
      ` (${offer.capabilities.resource_class}): ${p.gpu_second_price}/GPU-s,` +
      ` ${p.input_tokens_1k_price}/1k in, ${p.output_tokens_1k_price}/1k out,` +
      ` ${p.call_price}/call`);

    // 2. Authorize: a hold on the wallet and a voucher pinned to that worker.
    const auth = await authorize(broker.auths, {
      request_id: crypto.randomUUID(), amount: opts.amount, ttl_seconds: 300,
      scope: { model: opts.model, worker_id: offer.worker_id },
    }, metadata, deadline);
    console.log(`authorized ${auth.amount}: ${auth.authorization_id},` +
      ` expires ${timeText(auth.expire_time)}`);
    const { keys: voucherKeys } = await unary(broker.voucherKeys, 'ListVoucherKeys', {},
      new grpc.Metadata(), deadline);
    const claims = verify.verifyVoucher(auth.voucher, voucherKeys, Date.now());
    if (String(claims.amt) !== String(auth.amount) || claims.scope.worker_id !== offer.worker_id) {
      throw new AgentError('the voucher claims are not what was authorized');
    }
    console.log(`voucher ${claims.vid} verified with broker key ${claims.key_id}:` +
      ` amount ${claims.amt}, worker ${claims.scope.worker_id}`);

    // 3. Execute on the worker: the voucher is the credential, no API key.
    worker = new api.worker.v1.WorkerService(offer.endpoint, insecure);
    const job = { generate: { model: opts.model, prompt: opts.prompt,
      max_new_tokens: Number(opts.tokens) } };
    const seen = await execute(worker, { voucher: auth.voucher, job }, deadline);
    if (!seen.accepted || !seen.result) {
      throw new AgentError('the worker ended the stream without a result');
    }
    const { result } = seen;
    const u = result.usage;
    console.log(`job ${result.status}: ${u.input_tokens} tokens in, ${u.output_tokens} out,` +
      ` ${u.gpu_ms} ms compute, ${u.calls} call (${seen.usageReports} usage reports)`);
    if (result.status !== 'JOB_STATUS_COMPLETED' && result.status !== 'JOB_STATUS_STOPPED') {
      throw new AgentError(`the job did not complete: ${result.status} ${result.error}`);
    }

    // 4. Receipt: from the broker, checked against its published keys.
    const { receipt } = await unary(broker.auths, 'GetReceipt',
      { authorization_id: auth.authorization_id }, metadata, deadline);
    if (result.receipt && result.receipt.receipt_id !== receipt.receipt_id) {
      throw new AgentError(`the worker's receipt ${result.receipt.receipt_id} is not the` +
        ` broker's ${receipt.receipt_id}`);
    }
    const { keys } = await unary(broker.statements, 'ListReceiptSigningKeys', {},
      new grpc.Metadata(), deadline);
    const signed = verify.verifyReceipt(receipt, keys);
    console.log(`receipt ${receipt.receipt_id}: held ${receipt.held}, charged ${receipt.charged}` +
      ` (worker ${receipt.worker_payout} + fee ${receipt.platform_fee}),` +
      ` released ${receipt.released}, outcome ${receipt.outcome}`);
    console.log(`receipt signature verified with broker key ${receipt.key_id}`);
    verify.verifyFee(signed, feeBps);
    console.log(`fee split verified: ${receipt.platform_fee} is ${feeBps} bps of` +
      ` ${receipt.charged}, rounded down`);
    // The charge, from the broker's receipt alone (an agent that lost its Execute stream
    // can do the same): the worker's signed final usage and the prices, which stay
    // readable beside the seal when the owner's itemised part is sealed (docs/wire.md).
    const report = verify.verifyWorkerUsage(receipt.worker_usage_payload,
      receipt.worker_usage_signature, offer.usage_public_key, receipt.usage,
      receipt.worker_usage_batch);
    const charge = verify.chargeFor(report.usage, receipt.prices, receipt.held);
    if (charge !== BigInt(receipt.charged)) {
      throw new AgentError(`the signed usage costs ${charge}, not the charged ${receipt.charged}`);
    }
    console.log(`worker usage signature verified: ${report.usage.gpu_ms} ms,` +
      ` ${report.usage.output_tokens} tokens out cost ${charge}`);

    // 5. Balance: the hold is resolved and the wallet refilled to its target.
    const after = await unary(broker.wallets, 'GetBalance', {}, metadata, deadline);
    console.log(`wallet ${after.account_id} after: ${balanceText(after.balance)}`);
  } finally {
    if (worker) worker.close();
    channel.close();
  }
}

async function main() {
  let opts;
  try {
    opts = options();
  } catch (error) {
    console.error(`node-agent: ${error.message}`);
    return 2;
  }
  // Deadlines bound every call; this also catches anything else that hangs.
  setTimeout(() => {
    console.error(`node-agent: timed out after ${opts.timeout} s`);
    process.exit(1);
  }, Number(opts.timeout) * 1000 + 5000).unref();
  try {
    await run(opts);
    return 0;
  } catch (error) {
    const where = error.method ? `${error.method} failed: ` : '';
    const [first, ...rest] = describeError(error);
    console.error(`node-agent: ${where}${first}`);
    for (const line of rest) console.error(`  ${line}`);
    return 1;
  }
}

main().then((code) => { process.exitCode = code; });
