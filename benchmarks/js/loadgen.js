#!/usr/bin/env node
// Fan-out load generator for `python -m benchmarks` (see benchmarks/README.rst).
//
// Opens --clients WebSocket connections to --url, joins --topic on each with
// Phoenix's V2 JSON join, and prints one JSON line {"event": "ready", ...}
// once every join is answered.  Then it takes commands, one a line, on stdin:
//
//   go    one client (only with --trigger) pushes --broadcasts pushes of event
//         "broadcast" back to back; every client counts the broadcasts it
//         receives until clients x broadcasts have arrived (or --timeout
//         seconds pass) and prints {"event": "done", ...}: the deliveries,
//         the wall-clock times (ms since the epoch, comparable between
//         processes) of the first trigger and the last delivery, and this
//         process's CPU time (user, sys) between "go" and "done".
//   quit  closes every connection and exits (so does the end of stdin).
//
// Several processes may split the clients; only one of them triggers.
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');

function parseArgs(argv) {
  const opts = {
    url: null,
    clients: 5000,
    broadcasts: 100,
    topic: 'ping',
    messageBytes: 100,
    concurrency: 200,
    timeout: 120,
    connectTimeout: 120,
    trigger: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => argv[++i];
    switch (arg) {
      case '--url': opts.url = next(); break;
      case '--clients': opts.clients = parseInt(next(), 10); break;
      case '--broadcasts': opts.broadcasts = parseInt(next(), 10); break;
      case '--topic': opts.topic = next(); break;
      case '--message-bytes': opts.messageBytes = parseInt(next(), 10); break;
      case '--concurrency': opts.concurrency = parseInt(next(), 10); break;
      case '--timeout': opts.timeout = parseFloat(next()); break;
      case '--connect-timeout': opts.connectTimeout = parseFloat(next()); break;
      case '--trigger': opts.trigger = true; break;
      default: throw new Error(`unknown argument ${arg}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// The broadcast the server sends is [null,null,"<topic>","broadcast",{"body":"..."}];
// the body is sized so that this JSON text is --message-bytes long.
const overhead = JSON.stringify([null, null, opts.topic, 'broadcast', { body: '' }]).length;
const body = 'x'.repeat(Math.max(0, opts.messageBytes - overhead));
const JOIN = JSON.stringify(['1', '1', opts.topic, 'phx_join', {}]);
const pushFrame = (i) => JSON.stringify(['1', String(i + 2), opts.topic, 'broadcast', { body }]);

const sockets = [];
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
const connectStart = now();
const errors = {};

function noteError(err) {
  const key = String((err && (err.code || err.message)) || err);
  errors[key] = (errors[key] || 0) + 1;
}

function onMessage(data, isBinary) {
  // A broadcast starts with `[null`; the join reply with `["1"`.
  if (data[1] === 0x6e) {
    if (firstDeliveryBytes === null) firstDeliveryBytes = data.length;
    if (++deliveries === expected) finish();
    return;
  }
  if (!this._joined) {
    this._joined = true;
    joined++;
    checkReady();
  }
}

function openOne() {
  if (started >= opts.clients) return;
  started++;
  const ws = new WebSocket(opts.url, { perMessageDeflate: false });
  ws._joined = false;
  ws._open = false;
  sockets.push(ws);
  ws.on('open', () => {
    ws._open = true;
    opened++;
    ws.send(JOIN);
    openOne();
  });
  ws.on('message', onMessage);
  ws.on('error', (err) => {
    noteError(err);
    if (!ws._open) {
      failed++;
      checkReady();
      openOne();
    }
  });
  ws.on('close', () => {
    if (ws._open && !finished) closedEarly++;
  });
}

function checkReady() {
  if (ready || joined + failed < opts.clients) return;
  reportReady();
}

function reportReady() {
  ready = true;
  emit({
    event: 'ready',
    clients: opts.clients,
    opened,
    joined,
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
  if (expected === 0) return finish();
  doneTimer = setTimeout(finish, opts.timeout * 1000);
  if (opts.trigger) {
    const trigger = sockets.find((ws) => ws._joined && ws.readyState === WebSocket.OPEN);
    if (trigger === undefined) return finish();
    triggerAt = now();
    for (let i = 0; i < opts.broadcasts; i++) trigger.send(pushFrame(i));
  }
}

function finish() {
  if (finished) return;
  finished = true;
  const lastAt = now();
  if (doneTimer !== null) clearTimeout(doneTimer);
  const cpu = process.cpuUsage(cpuAtGo);
  emit({
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
  });
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
for (let i = 0; i < Math.min(opts.concurrency, opts.clients); i++) openOne();
