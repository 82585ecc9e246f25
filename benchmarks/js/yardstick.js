#!/usr/bin/env node
// Load generator of the yardstick workloads (`python -m benchmarks all`, see
// benchmarks/README.rst): fan-out, round trip, join storm and memory, against
// twisted_phoenix, the plain-Autobahn floors and the Python peers.
//
// It opens --clients WebSocket connections to --url (--concurrency handshakes
// in flight), does the protocol's own handshake on each, joins --topic on
// each unless --no-join is given, and prints one JSON line
// {"event": "ready", ...}.  Then it takes commands, one a line, on stdin:
//
//   fanout N [B]  the client of the --trigger process pushes N "broadcast"
//                 events back to back; every client counts the broadcasts it
//                 receives until clients x N have arrived, or B seconds (the
//                 budget; --timeout by default) pass, and prints
//                 {"event": "done", ...} with the first push and the last
//                 delivery (ms since the epoch, comparable between processes;
//                 the end of the budget when it was cut) and this process's
//                 CPU time.
//   roundtrip S   every client, in a loop for S seconds, pushes "ping" and
//                 awaits its reply; prints {"event": "done", ...} with the
//                 replies that arrived within the S seconds and the p50, p90,
//                 p99 and max latency (ms) of every round trip.
//   join          every (unjoined) client sends its join at once; prints
//                 {"event": "done", ...} when the last join reply arrives:
//                 the time from the first join sent to the last reply.
//   quit          closes every connection and exits (so does end of stdin).
//
// Two wire protocols (--protocol):
//
//   phoenix   Phoenix V2 JSON: join ["1","1",topic,"phx_join",{}], answered by
//             a reply; push ["1",ref,topic,event,payload]; a broadcast
//             arrives as [null,null,topic,"broadcast",{...}].  twisted_phoenix,
//             the Autobahn floors, websockets and Channels speak it (the
//             floors and the peers echo a "ping" push back as its reply).
//   socketio  Engine.IO 4 / Socket.IO 5 over a WebSocket, no polling
//             (url .../socket.io/?EIO=4&transport=websocket): the server's
//             open packet 0{...}, then "40" (connect to namespace /) answered
//             by 40{...}; join = 42<id>["join",topic] acked by 43<id>[...];
//             ping = 42<id>["ping",{}] acked by 43<id>[...]; a push is
//             42["broadcast",{...}] and so is every delivery; the server's
//             Engine.IO ping "2" is answered "3".
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');

function parseArgs(argv) {
  const opts = {
    url: null,
    protocol: 'phoenix',
    clients: 100,
    join: true,
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
      case '--protocol': opts.protocol = next(); break;
      case '--clients': opts.clients = parseInt(next(), 10); break;
      case '--no-join': opts.join = false; break;
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
  if (!['phoenix', 'socketio'].includes(opts.protocol)) throw new Error(`unknown protocol ${opts.protocol}`);
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// -- the protocols -------------------------------------------------------------------
//
// Each builds the frames a client sends and classifies the frames it gets:
// 'delivery' (a broadcast), 'reply' (the answer to a join or a ping),
// 'connected' (the protocol's own handshake is done), or null (ignored).

const CH = (s) => s.charCodeAt(0);

function phoenixProtocol(topic, messageBytes) {
  const overhead = JSON.stringify([null, null, topic, 'broadcast', { body: '' }]).length;
  const body = 'x'.repeat(Math.max(0, messageBytes - overhead));
  return {
    connectsOnOpen: true,
    join: (ref) => JSON.stringify(['1', String(ref), topic, 'phx_join', {}]),
    ping: (ref) => JSON.stringify(['1', String(ref), topic, 'ping', {}]),
    push: (ref) => JSON.stringify(['1', String(ref), topic, 'broadcast', { body }]),
    classify(ws, data) {
      // A broadcast starts with `[null`; a reply with `["1"`.
      if (data[1] === 0x6e) return 'delivery';
      return 'reply';
    },
  };
}

function socketioProtocol(topic, messageBytes) {
  const overhead = ('42' + JSON.stringify(['broadcast', { body: '' }])).length;
  const body = 'x'.repeat(Math.max(0, messageBytes - overhead));
  const pushFrame = '42' + JSON.stringify(['broadcast', { body }]);
  const joinTail = JSON.stringify(['join', topic]);
  const pingTail = JSON.stringify(['ping', {}]);
  return {
    connectsOnOpen: false,
    join: (ref) => '42' + ref + joinTail,
    ping: (ref) => '42' + ref + pingTail,
    push: () => pushFrame,
    classify(ws, data) {
      const c0 = data[0];
      if (c0 === CH('4')) {
        const c1 = data[1];
        if (c1 === CH('2')) return 'delivery'; // 42["broadcast",...]
        if (c1 === CH('3')) return 'reply'; // 43<id>[...]
        if (c1 === CH('0')) return 'connected'; // 40{"sid":...}
        if (c1 === CH('1')) return null; // 41: disconnected from the namespace
        return null;
      }
      if (c0 === CH('0')) {
        ws.send('40'); // the Engine.IO open packet: connect to namespace "/"
        return null;
      }
      if (c0 === CH('2')) {
        ws.send('3'); // Engine.IO ping -> pong
        return null;
      }
      return null;
    },
  };
}

const proto = (opts.protocol === 'socketio' ? socketioProtocol : phoenixProtocol)(opts.topic, opts.messageBytes);

// -- connections ---------------------------------------------------------------------

const sockets = [];
let started = 0;
let connected = 0;
let joined = 0;
let failed = 0;
let closedEarly = 0;
let ready = false;
let finished = false;
const connectStart = now();
const errors = {};

// What the harness asked for, and its figures.
let mode = null; // 'connect', 'fanout', 'roundtrip', 'join'
let deliveries = 0;
let expected = Infinity;
let firstDeliveryBytes = null;
let goAt = null;
let triggerAt = null;
let lastAt = null;
let cpuAtGo = null;
let doneTimer = null;
// round trip
let rtDeadline = 0;
let rtReplies = 0;
let rtLate = 0;
let rtOutstanding = 0;
let latencies = new Float64Array(1 << 16);
let nLatencies = 0;
// join storm
let joinSent = 0;
let joinReplies = 0;
let firstReplyAt = null;

function noteError(err) {
  const key = String((err && (err.code || err.message)) || err);
  errors[key] = (errors[key] || 0) + 1;
}

function sendJoin(ws) {
  ws._ref++;
  ws._joining = true;
  ws.send(proto.join(ws._ref));
}

function onConnected(ws) {
  if (ws._connected) return;
  ws._connected = true;
  connected++;
  if (opts.join) sendJoin(ws);
  else checkReady();
}

function onReply(ws) {
  if (ws._joining) {
    ws._joining = false;
    ws._joined = true;
    joined++;
    if (mode === 'join') {
      const t = now();
      if (firstReplyAt === null) firstReplyAt = t;
      lastAt = t;
      if (++joinReplies === joinSent) finish();
    } else {
      checkReady();
    }
    return;
  }
  if (mode === 'roundtrip' && ws._pingAt !== null) {
    const t = performance.now();
    if (t <= rtDeadline) {
      if (nLatencies === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      latencies[nLatencies++] = t - ws._pingAt;
      rtReplies++;
    } else {
      rtLate++;
    }
    ws._pingAt = null;
    rtOutstanding--;
    if (t <= rtDeadline) sendPing(ws, t);
    else if (rtOutstanding === 0) finish();
  }
}

function onMessage(data) {
  const kind = proto.classify(this, data);
  if (kind === 'delivery') {
    if (firstDeliveryBytes === null) firstDeliveryBytes = data.length;
    if (++deliveries === expected) finish();
  } else if (kind === 'reply') {
    onReply(this);
  } else if (kind === 'connected') {
    onConnected(this);
  }
}

function openOne() {
  if (started >= opts.clients) return;
  started++;
  const ws = new WebSocket(opts.url, { perMessageDeflate: false });
  ws._ref = 0;
  ws._open = false;
  ws._connected = false;
  ws._joining = false;
  ws._joined = false;
  ws._pingAt = null;
  sockets.push(ws);
  ws.on('open', () => {
    ws._open = true;
    if (proto.connectsOnOpen) onConnected(ws);
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
    if (ws._open && !finished) {
      closedEarly++;
      if (!ready) {
        failed++;
        checkReady();
      }
    }
  });
}

function checkReady() {
  if (ready) return;
  const settled = opts.join ? joined + failed : connected + failed;
  if (settled >= opts.clients) reportReady();
}

function reportReady() {
  ready = true;
  emit({
    event: 'ready',
    clients: opts.clients,
    connected,
    joined,
    failed,
    errors,
    connect_seconds: (now() - connectStart) / 1000,
  });
}

// -- the commands --------------------------------------------------------------------

function begin(kind, seconds) {
  if (mode !== null) return false;
  mode = kind;
  goAt = now();
  cpuAtGo = process.cpuUsage();
  doneTimer = setTimeout(finish, (seconds || opts.timeout) * 1000);
  return true;
}

function fanout(n, budget) {
  if (!begin('fanout', budget)) return;
  expected = joined * n;
  if (expected === 0) return finish();
  if (opts.trigger) {
    const trigger = sockets.find((ws) => ws._joined && ws.readyState === WebSocket.OPEN);
    if (trigger === undefined) return finish();
    triggerAt = now();
    for (let i = 0; i < n; i++) trigger.send(proto.push(++trigger._ref));
  }
}

function sendPing(ws, t) {
  ws._ref++;
  ws._pingAt = t;
  rtOutstanding++;
  ws.send(proto.ping(ws._ref));
}

function roundtrip(seconds) {
  if (!begin('roundtrip')) return;
  const live = sockets.filter((ws) => ws._joined && ws.readyState === WebSocket.OPEN);
  if (live.length === 0) return finish();
  const t = performance.now();
  rtDeadline = t + seconds * 1000;
  for (const ws of live) sendPing(ws, t);
}

function joinStorm() {
  if (!begin('join')) return;
  const todo = sockets.filter((ws) => ws._connected && !ws._joined && ws.readyState === WebSocket.OPEN);
  joinSent = todo.length;
  if (joinSent === 0) return finish();
  triggerAt = now();
  for (const ws of todo) sendJoin(ws);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}

function finish() {
  if (finished) return;
  finished = true;
  const endAt = now();
  if (doneTimer !== null) clearTimeout(doneTimer);
  const cpu = process.cpuUsage(cpuAtGo);
  const out = {
    event: 'done',
    mode,
    joined,
    go_at: goAt,
    trigger_at: triggerAt,
    end_at: endAt,
    cpu_user: cpu.user / 1e6,
    cpu_sys: cpu.system / 1e6,
    closed_early: closedEarly,
    errors,
  };
  if (mode === 'fanout') {
    Object.assign(out, {
      expected,
      deliveries,
      missing: expected - deliveries,
      cut: deliveries < expected,
      last_at: endAt,
      first_delivery_bytes: firstDeliveryBytes,
    });
  } else if (mode === 'roundtrip') {
    const sorted = latencies.slice(0, nLatencies).sort();
    Object.assign(out, {
      replies: rtReplies,
      late_replies: rtLate,
      outstanding: rtOutstanding,
      p50_ms: percentile(sorted, 50),
      p90_ms: percentile(sorted, 90),
      p99_ms: percentile(sorted, 99),
      max_ms: nLatencies ? sorted[nLatencies - 1] : null,
      mean_ms: nLatencies ? sorted.reduce((a, b) => a + b, 0) / nLatencies : null,
    });
  } else if (mode === 'join') {
    Object.assign(out, {
      sent: joinSent,
      replies: joinReplies,
      missing: joinSent - joinReplies,
      first_reply_at: firstReplyAt,
      last_at: lastAt,
    });
  }
  emit(out);
}

function quit() {
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const [command, arg, ...rest] = line.trim().split(/\s+/);
  if (command === 'fanout') fanout(parseInt(arg, 10), parseFloat(rest[0]) || 0);
  else if (command === 'roundtrip') roundtrip(parseFloat(arg));
  else if (command === 'join') joinStorm();
  else if (command === 'quit') quit();
});
rl.on('close', quit);

setTimeout(() => { if (!ready) reportReady(); }, opts.connectTimeout * 1000).unref();
for (let i = 0; i < Math.min(opts.concurrency, opts.clients); i++) openOne();
