#!/usr/bin/env node
// Load generator of `python -m benchmarks cluster` (see benchmarks/README.rst).
//
// Opens --clients WebSocket connections spread round-robin over the
// --sub-url URLs (repeatable: one per node that holds subscribers) and one
// more, the trigger, to --trigger-url; joins --topic on each with Phoenix's
// V2 JSON join and prints {"event": "ready", ...} once every join is
// answered.  Then it takes commands, one a line, on stdin:
//
//   go    the trigger pushes --broadcasts pushes of event "broadcast", each
//         payload {"i": <index>, "body": "x..."} sized so that the broadcast's
//         JSON text is --message-bytes long; back to back with --interval 0,
//         else one every --interval ms.  Every subscriber counts the
//         broadcasts it receives until clients x broadcasts have arrived (or
//         --timeout seconds pass); then {"event": "done", ...}: the
//         deliveries, the wall-clock times (ms since the epoch) of the first
//         push and the last delivery, this process's CPU time (user, sys)
//         between "go" and "done", and with --latency the latency of every
//         delivery: the time from the push of broadcast i (this process's
//         clock) to its arrival at a subscriber, as percentiles in ms, over
//         all deliveries and over the first delivery of each broadcast.
//   quit  closes every connection and exits (so does the end of stdin).
//
// The trigger is joined to the topic too (PingChannel only takes pushes on a
// joined topic); the broadcasts it gets back are not counted.
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');

function parseArgs(argv) {
  const opts = {
    subUrls: [],
    triggerUrl: null,
    clients: 4000,
    broadcasts: 100,
    topic: 'ping',
    messageBytes: 100,
    interval: 0,
    latency: false,
    concurrency: 200,
    timeout: 120,
    connectTimeout: 120,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => argv[++i];
    switch (arg) {
      case '--sub-url': opts.subUrls.push(next()); break;
      case '--trigger-url': opts.triggerUrl = next(); break;
      case '--clients': opts.clients = parseInt(next(), 10); break;
      case '--broadcasts': opts.broadcasts = parseInt(next(), 10); break;
      case '--topic': opts.topic = next(); break;
      case '--message-bytes': opts.messageBytes = parseInt(next(), 10); break;
      case '--interval': opts.interval = parseFloat(next()); break;
      case '--latency': opts.latency = true; break;
      case '--concurrency': opts.concurrency = parseInt(next(), 10); break;
      case '--timeout': opts.timeout = parseFloat(next()); break;
      case '--connect-timeout': opts.connectTimeout = parseFloat(next()); break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  if (!opts.subUrls.length || !opts.triggerUrl) throw new Error('--sub-url and --trigger-url are required');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// The server sends [null,null,"<topic>","broadcast",{"i":<i>,"body":"..."}];
// the body is sized per broadcast so that this JSON text is --message-bytes long.
function payload(i) {
  const overhead = JSON.stringify([null, null, opts.topic, 'broadcast', { i, body: '' }]).length;
  return { i, body: 'x'.repeat(Math.max(0, opts.messageBytes - overhead)) };
}
const JOIN = JSON.stringify(['1', '1', opts.topic, 'phx_join', {}]);
const pushFrame = (i) => JSON.stringify(['1', String(i + 2), opts.topic, 'broadcast', payload(i)]);

const sockets = [];
let trigger = null;
let opened = 0;
let joined = 0;
let failed = 0;
let closedEarly = 0;
let started = 0;
let ready = false;
let deliveries = 0;
let expected = Infinity;
let firstDeliveryBytes = null;
let goAt = null;
let triggerAt = null;
let cpuAtGo = null;
let finished = false;
let doneTimer = null;
let pushTimer = null;
const sentAt = new Float64Array(opts.broadcasts);
const firstAt = new Float64Array(opts.broadcasts); // 0: not yet delivered
const latencies = [];
const connectStart = now();
const errors = {};
const joinedPerUrl = opts.subUrls.map(() => 0);

function noteError(err) {
  const key = String((err && (err.code || err.message)) || err);
  errors[key] = (errors[key] || 0) + 1;
}

function onMessage(data) {
  // A broadcast starts with `[null`; the join reply with `["1"`.
  if (data[1] === 0x6e) {
    if (this._trigger) return;
    const at = opts.latency ? now() : 0;
    if (firstDeliveryBytes === null) firstDeliveryBytes = data.length;
    if (opts.latency) {
      const i = JSON.parse(data)[4].i;
      latencies.push(at - sentAt[i]);
      if (firstAt[i] === 0) firstAt[i] = at;
    }
    if (++deliveries === expected) finish();
    return;
  }
  if (!this._joined) {
    this._joined = true;
    if (this._trigger) {
      trigger = this;
    } else {
      joined++;
      joinedPerUrl[this._urlIndex]++;
    }
    checkReady();
  }
}

function open(url, urlIndex, isTrigger) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  ws._joined = false;
  ws._open = false;
  ws._trigger = isTrigger;
  ws._urlIndex = urlIndex;
  sockets.push(ws);
  ws.on('open', () => {
    ws._open = true;
    opened++;
    ws.send(JOIN);
    if (!isTrigger) openNext();
  });
  ws.on('message', onMessage);
  ws.on('error', (err) => {
    noteError(err);
    if (!ws._open) {
      if (isTrigger) {
        trigger = false;
        checkReady();
      } else {
        failed++;
        checkReady();
        openNext();
      }
    }
  });
  ws.on('close', () => {
    if (ws._open && !finished) closedEarly++;
  });
}

function openNext() {
  if (started >= opts.clients) return;
  const k = started++;
  open(opts.subUrls[k % opts.subUrls.length], k % opts.subUrls.length, false);
}

function checkReady() {
  if (ready || trigger === null || joined + failed < opts.clients) return;
  reportReady();
}

function reportReady() {
  ready = true;
  emit({
    event: 'ready',
    clients: opts.clients,
    opened,
    joined,
    joined_per_url: joinedPerUrl,
    trigger: Boolean(trigger),
    failed,
    errors,
    connect_seconds: (now() - connectStart) / 1000,
  });
}

function go() {
  if (goAt !== null) return;
  goAt = now();
  cpuAtGo = process.cpuUsage();
  expected = joined * opts.broadcasts;
  if (expected === 0 || !trigger || trigger.readyState !== WebSocket.OPEN) return finish();
  doneTimer = setTimeout(finish, opts.timeout * 1000);
  const frames = [];
  for (let i = 0; i < opts.broadcasts; i++) frames.push(pushFrame(i));
  triggerAt = now();
  if (opts.interval <= 0) {
    for (let i = 0; i < opts.broadcasts; i++) {
      sentAt[i] = now();
      trigger.send(frames[i]);
    }
    return;
  }
  // One push every --interval ms, on a schedule fixed from the first push so
  // that timer lateness does not accumulate.
  let i = 0;
  const tick = () => {
    pushTimer = null;
    const t = now();
    while (i < opts.broadcasts && triggerAt + i * opts.interval <= t + 0.1) {
      sentAt[i] = now();
      trigger.send(frames[i]);
      i++;
    }
    if (i < opts.broadcasts) {
      pushTimer = setTimeout(tick, Math.max(0, triggerAt + i * opts.interval - now()));
    }
  };
  tick();
}

function percentiles(values) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  const at = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n: sorted.length,
    min: sorted[0],
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    max: sorted[sorted.length - 1],
    mean: sum / sorted.length,
  };
}

function finish() {
  if (finished) return;
  finished = true;
  const lastAt = now();
  if (doneTimer !== null) clearTimeout(doneTimer);
  if (pushTimer !== null) clearTimeout(pushTimer);
  const cpu = process.cpuUsage(cpuAtGo || undefined);
  const out = {
    event: 'done',
    joined,
    expected,
    deliveries,
    missing: expected - deliveries,
    closed_early: closedEarly,
    go_at: goAt,
    trigger_at: triggerAt,
    last_at: lastAt,
    cpu_user: cpu.user / 1e6,
    cpu_sys: cpu.system / 1e6,
    first_delivery_bytes: firstDeliveryBytes,
    errors,
  };
  if (opts.latency) {
    const first = [];
    for (let i = 0; i < opts.broadcasts; i++) if (firstAt[i] > 0) first.push(firstAt[i] - sentAt[i]);
    out.latency_ms = percentiles(latencies);
    out.first_latency_ms = percentiles(first);
  }
  emit(out);
}

function quit() {
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const command = line.trim();
  if (command === 'go') go();
  else if (command === 'quit') quit();
});
rl.on('close', quit);

setTimeout(() => { if (!ready) reportReady(); }, opts.connectTimeout * 1000).unref();
open(opts.triggerUrl, -1, true);
for (let i = 0; i < Math.min(opts.concurrency, opts.clients); i++) openNext();
