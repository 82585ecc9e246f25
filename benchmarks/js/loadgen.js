#!/usr/bin/env node
// The load generator of `python -m benchmarks` (see benchmarks/README.rst).
//
//   node loadgen.js <subcommand> [--option value ...]
//
// Every subcommand prints JSON lines on stdout ({"event": ...}) and takes
// commands, one a line, on stdin; the end of stdin (or `quit`) closes every
// connection and exits.  Times are ms since the epoch (performance.timeOrigin
// + performance.now()), comparable between processes on one machine.
//
// The clients behave like phoenix.js 1.8: they connect to the socket's
// /websocket?vsn=2.0.0 URL (the harness gives it), join with
// [ref, ref, topic, "phx_join", {}] where ref is the connection's message
// counter (as phoenix.js numbers its pushes), send a heartbeat
// [null, ref, "phoenix", "heartbeat", {}] 30 s after the connection opens and
// 30 s after each reply (closing the connection when the previous one had no
// reply by then), and, where a workload asks for it, reconnect with
// phoenix.js's backoff (10, 50, 100, 150, 200, 250, 500, 1000, 2000, then
// 5000 ms) and rejoin (at once on reconnecting; after a join timeout of
// 10 s or an error, after 1000, 2000, 5000, then 10000 ms).  A connection
// that fails or closes is counted, with its reason, in the event that follows.
//
// Subcommands (the harness modules that drive them in brackets):
//
//   clients  (fanout, cluster, sweep, roundtrip, memory, joinstorm)
//            --clients C connections spread over the --url URLs (repeatable),
//            --concurrency handshakes in flight, each joined to --topic
//            unless --no-join; with --trigger-url one more client there, the
//            trigger, not counted; with --trigger (and no --trigger-url) the
//            first joined client triggers.  --probe: before "ready", the
//            trigger broadcasts until every URL has received one (a cluster
//            is linked).  --protocol socketio speaks Engine.IO 4 / Socket.IO 5
//            instead (the python-socketio peer).  Event "ready"; commands:
//              fanout N [BUDGET_S] [INTERVAL_MS] [LATENCY]
//                  the trigger pushes N "broadcast" events (back to back, or
//                  one every INTERVAL_MS); every client counts deliveries until
//                  joined x N arrived or BUDGET_S (--timeout) passed; with
//                  LATENCY=1 each payload carries its index and every
//                  delivery's latency is measured.  Event "done".
//              roundtrip S   every client pushes "ping" and awaits its reply,
//                  in a loop, for S seconds.  Event "done".
//              join          every unjoined client sends its join at once.
//                  Event "done" when the last reply is in.
//   storm    (storm)  --clients N connect and join at once (--concurrency 0)
//            on "go"; event "done": joined, failures by reason, seconds
//            until all joined.  --herd: N phoenix.js clients connect and join
//            (event "ready"); when the server goes away they reconnect with
//            phoenix.js's backoff and rejoin; event "done" once every one
//            went down and rejoined (or --timeout s after the first went down).
//   canary   (storm, flood)  one client joined to --topic; on "go" it sends a
//            heartbeat (--kind heartbeat) or pushes "ping" (--kind ping) every
//            --interval ms; "report" prints event "canary": reply latency,
//            unanswered, the longest gap between replies, its own timer lag.
//            --reconnect: phoenix.js's reconnect and rejoin.
//   slow     (slow)  --healthy H and --stalled S clients and a trigger joined
//            to --topic; commands stall, broadcast, resume, close-stalled,
//            fresh N (see slowMode below).
//   flood    (flood)  one client pushes "ping" as fast as its socket takes
//            them for --seconds after "go"; event "done".
//   soak     (soak)  subscribers, senders and churning clients against every
//            --url until quit; "stats" prints event "stats" (the figures since
//            the last "stats").
'use strict';

const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');

// -- utilities ----------------------------------------------------------------------

const now = () => performance.timeOrigin + performance.now();
const mono = () => performance.now();
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const HEARTBEAT_MS = 30000; // phoenix.js heartbeatIntervalMs
const JOIN_TIMEOUT_MS = 10000; // phoenix.js DEFAULT_TIMEOUT
const RECONNECT_AFTER_MS = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
const REJOIN_AFTER_MS = [1000, 2000, 5000];
const reconnectAfterMs = (tries) => RECONNECT_AFTER_MS[tries - 1] || 5000;
const rejoinAfterMs = (tries) => REJOIN_AFTER_MS[tries - 1] || 10000;

/** Options: defaults give the types; arrays are repeatable; booleans are flags. */
function parseOptions(argv, defaults) {
  const opts = {};
  for (const [k, v] of Object.entries(defaults)) opts[k] = Array.isArray(v) ? [] : v;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const key = arg.startsWith('--') ? arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase()) : '';
    if (!(key in defaults)) throw new Error(`unknown option ${arg}`);
    const d = defaults[key];
    if (typeof d === 'boolean') {
      opts[key] = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    if (Array.isArray(d)) opts[key].push(value);
    else if (typeof d === 'number') {
      opts[key] = Number(value);
      if (Number.isNaN(opts[key])) throw new Error(`${arg} takes a number, not ${value}`);
    } else opts[key] = value;
  }
  return opts;
}

/** Why a connection failed, in a few words: refused, reset, timeout, http 503, ... */
function reasonOf(err) {
  if (!err) return 'unknown';
  const code = err.code;
  if (code === 'ECONNREFUSED') return 'refused';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset';
  if (code === 'ETIMEDOUT') return 'timeout';
  const message = String(err.message || err);
  if (/handshake has timed out/i.test(message)) return 'timeout';
  const http = /Unexpected server response: (\d+)/.exec(message);
  if (http) return `http ${http[1]}`;
  if (/socket hang up/i.test(message)) return 'reset';
  return code || message.slice(0, 80);
}

/** Why a connection that opened closed: the close code and reason, or the socket error. */
function closeReason(info) {
  if (info.error) return reasonOf(info.error);
  return `closed ${info.code}${info.reason ? ' ' + info.reason.slice(0, 60) : ''}`;
}

const bump = (counts, key, n = 1) => {
  counts[key] = (counts[key] || 0) + n;
};

/** Latencies (or any values): percentiles by nearest rank. */
class Samples {
  constructor() {
    this.values = new Float64Array(1024);
    this.n = 0;
  }

  add(x) {
    if (this.n === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.n++] = x;
  }

  summary() {
    if (this.n === 0) return null;
    const sorted = this.values.slice(0, this.n).sort();
    const at = (p) => sorted[Math.max(0, Math.min(this.n - 1, Math.ceil(p * this.n) - 1))];
    let sum = 0;
    for (const v of sorted) sum += v;
    return {
      n: this.n, min: sorted[0], p50: at(0.5), p90: at(0.9), p99: at(0.99),
      max: sorted[this.n - 1], mean: sum / this.n,
    };
  }

  reset() {
    this.n = 0;
  }
}

/** CPU seconds of this process since `since` (a process.cpuUsage() value). */
function cpuSince(since) {
  const cpu = process.cpuUsage(since || undefined);
  return { cpu_user: cpu.user / 1e6, cpu_sys: cpu.system / 1e6 };
}

/** The payload {"body": "x..."} (with extra keys first) sized so that the broadcast's JSON text is `bytes` long. */
function sizedPayload(topic, bytes, extra = {}) {
  const overhead = JSON.stringify([null, null, topic, 'broadcast', { ...extra, body: '' }]).length;
  return { ...extra, body: 'x'.repeat(Math.max(0, bytes - overhead)) };
}

function median(values) {
  if (!values.length) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** Commands on stdin, one a line: handlers[name](...args); quit and the end of stdin call onQuit. */
function commands(handlers, onQuit) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [name, ...args] = line.trim().split(/\s+/);
    if (name === 'quit') onQuit();
    else if (name && handlers[name]) handlers[name](...args);
    else if (name) emit({ event: 'error', message: `unknown command ${name}` });
  });
  rl.on('close', onQuit);
}

/** Terminate every connection and exit. */
function quitWith(conns) {
  return () => {
    for (const c of conns()) c.stop();
    process.exit(0);
  };
}

// -- a phoenix.js-like connection ---------------------------------------------------

const NOOP = () => {};
const HOOKS = {
  open: NOOP, // (conn): the WebSocket is open
  joined: NOOP, // (conn, topic, response): a join was answered ok
  joinFailed: NOOP, // (conn, topic, why): a join was answered with an error, or timed out
  reply: NOOP, // (conn, pending, payload): the reply to a push() (pending: {kind, topic, event, at})
  delivery: NOOP, // (conn, data): a broadcast [null,null,...] (the raw bytes, not parsed)
  push: NOOP, // (conn, message): any other message from the server (parsed)
  heartbeat: NOOP, // (conn, ms): the reply to one of phoenix.js's 30 s heartbeats
  heartbeatTimeout: NOOP, // (conn): no reply to the last heartbeat in 30 s; the connection is closed
  close: NOOP, // (conn, {code, reason, wasOpen, error, byUs}): the connection closed or failed
  reconnect: NOOP, // (conn): a reconnect attempt starts
};

/**
 * One WebSocket connection speaking Phoenix's V2 JSON the way phoenix.js does.
 *
 * Options: heartbeatMs (30000; 0: none), reconnect (false: a closed
 * connection stays closed; true: reconnect and rejoin as phoenix.js does),
 * joinTimeoutMs (10000 with reconnect, else 0: wait for the reply).
 */
class Conn {
  constructor(url, hooks, options = {}) {
    this.url = url;
    this.hooks = hooks;
    this.heartbeatMs = options.heartbeatMs === undefined ? HEARTBEAT_MS : options.heartbeatMs;
    this.reconnect = Boolean(options.reconnect);
    this.joinTimeoutMs = options.joinTimeoutMs === undefined
      ? (this.reconnect ? JOIN_TIMEOUT_MS : 0) : options.joinTimeoutMs;
    this.ws = null;
    this.ref = 0;
    this.channels = new Map(); // topic -> {state, joinRef, payload, timer, tries, joinedAt}
    this.pending = new Map(); // ref -> {kind, topic, event, at}
    this.isOpen = false;
    this.opens = 0;
    this.stopped = false;
    this.lastError = null;
    this.hbRef = null;
    this.hbAt = 0;
    this.hbTimer = null;
    this.hbTimeoutTimer = null;
    this.reconnectTries = 0;
    this.reconnectTimer = null;
    this.deliveries = 0;
    this.data = {}; // the workload's own per-connection state
  }

  makeRef() {
    this.ref += 1;
    return String(this.ref);
  }

  connect() {
    this.lastError = null;
    const ws = new WebSocket(this.url, { perMessageDeflate: false });
    this.ws = ws;
    ws.on('open', () => { if (ws === this.ws) this._opened(); });
    ws.on('message', (data) => { if (ws === this.ws) this._message(data); });
    ws.on('error', (err) => { if (ws === this.ws) this.lastError = err; });
    ws.on('close', (code, reason) => { if (ws === this.ws) this._closed(code, reason); });
    return this;
  }

  send(message) {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  /** Join `topic` now, or as soon as the connection opens. */
  join(topic, payload = {}) {
    let ch = this.channels.get(topic);
    if (ch === undefined) {
      ch = { state: 'closed', joinRef: null, payload, timer: null, tries: 0, joinedAt: 0 };
      this.channels.set(topic, ch);
    }
    ch.payload = payload;
    ch.state = 'joining';
    if (this.isOpen) this._sendJoin(topic, ch);
  }

  joinedTo(topic) {
    const ch = this.channels.get(topic);
    return ch !== undefined && ch.state === 'joined';
  }

  /** Push an event that gets a reply (hooks.reply); its ref. */
  push(topic, event, payload, kind = 'push') {
    const ch = this.channels.get(topic);
    const ref = this.makeRef();
    this.pending.set(ref, { kind, topic, event, at: mono() });
    this.send([ch ? ch.joinRef : null, ref, topic, event, payload]);
    return ref;
  }

  /** Push an event without waiting for its reply (a reply, if any, goes to hooks.push). */
  cast(topic, event, payload) {
    const ch = this.channels.get(topic);
    return this.send([ch ? ch.joinRef : null, this.makeRef(), topic, event, payload]);
  }

  leave(topic) {
    const ch = this.channels.get(topic);
    if (ch === undefined) return null;
    clearTimeout(ch.timer);
    ch.timer = null;
    const ref = this.makeRef();
    this.pending.set(ref, { kind: 'leave', topic, event: 'phx_leave', at: mono() });
    this.send([ch.joinRef, ref, topic, 'phx_leave', {}]);
    ch.state = 'closed';
    return ref;
  }

  /** Close for good (no reconnect): with a close frame, or at once (terminate). */
  stop(graceful = false) {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this._clearHeartbeat();
    for (const ch of this.channels.values()) {
      clearTimeout(ch.timer);
      ch.timer = null;
    }
    const ws = this.ws;
    if (ws === null) return;
    if (graceful && ws.readyState === WebSocket.OPEN) ws.close(1000);
    else ws.terminate();
  }

  /** Stop reading (and heartbeating): a client that has stalled. */
  pause() {
    this._clearHeartbeat();
    if (this.ws && this.ws._socket) this.ws._socket.pause();
  }

  resume() {
    if (this.ws && this.ws._socket) this.ws._socket.resume();
  }

  // -- events of the WebSocket ----------------------------------------------------

  _opened() {
    this.isOpen = true;
    this.opens += 1;
    this.reconnectTries = 0;
    this._resetHeartbeat();
    for (const [topic, ch] of this.channels) {
      if (ch.state === 'joining' || ch.state === 'errored') this._sendJoin(topic, ch);
    }
    this.hooks.open(this);
  }

  _message(data) {
    // The hot path: a broadcast, [null,null,...], is counted without parsing.
    if (data[1] === 0x6e && data[6] === 0x6e) {
      this.deliveries += 1;
      this.hooks.delivery(this, data);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch (e) {
      message = null;
    }
    if (!Array.isArray(message) || message.length < 5) {
      this.hooks.push(this, [null, null, null, 'undecodable', String(data).slice(0, 100)]);
      return;
    }
    const [joinRef, ref, topic, event, payload] = message;
    // The answer to one of our pushes carries its ref: a phx_reply from a
    // Phoenix server, or the push itself echoed by a floor or a peer.
    if (ref !== null && ref === this.hbRef) {
      const ms = mono() - this.hbAt;
      this._clearHeartbeat();
      if (this.heartbeatMs > 0) this.hbTimer = setTimeout(() => this._sendHeartbeat(), this.heartbeatMs);
      this.hooks.heartbeat(this, ms);
      return;
    }
    const pending = ref === null ? undefined : this.pending.get(ref);
    if (pending !== undefined) {
      this.pending.delete(ref);
      const reply = event === 'phx_reply' ? payload : { status: 'ok', response: {}, echo: true };
      if (pending.kind === 'join') this._joinReply(topic, ref, reply);
      else this.hooks.reply(this, pending, reply);
      return;
    }
    if (event === 'phx_error' || event === 'phx_close') {
      const ch = this.channels.get(topic);
      if (ch !== undefined && ch.joinRef === joinRef && ch.state !== 'closed') {
        clearTimeout(ch.timer);
        ch.timer = null;
        if (event === 'phx_close') {
          ch.state = 'closed';
        } else {
          ch.state = 'errored';
          if (this.reconnect) this._scheduleRejoin(topic, ch);
        }
      }
    }
    this.hooks.push(this, message);
  }

  _closed(code, reason) {
    const wasOpen = this.isOpen;
    this.isOpen = false;
    this._clearHeartbeat();
    for (const ch of this.channels.values()) {
      clearTimeout(ch.timer);
      ch.timer = null;
      if (ch.state === 'joined' || ch.state === 'joining') ch.state = 'errored';
    }
    this.pending.clear();
    const info = { code, reason: String(reason || ''), wasOpen, error: this.lastError, byUs: this.stopped };
    this.hooks.close(this, info);
    if (this.reconnect && !this.stopped) this._scheduleReconnect();
  }

  // -- phoenix.js's timers ----------------------------------------------------------

  _scheduleReconnect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.reconnectTries += 1;
      if (this.stopped) return;
      this.hooks.reconnect(this);
      this.connect();
    }, reconnectAfterMs(this.reconnectTries + 1));
  }

  _sendJoin(topic, ch) {
    const ref = this.makeRef();
    ch.joinRef = ref;
    ch.state = 'joining';
    this.pending.set(ref, { kind: 'join', topic, event: 'phx_join', at: mono() });
    this.send([ref, ref, topic, 'phx_join', ch.payload]);
    clearTimeout(ch.timer);
    ch.timer = null;
    if (this.joinTimeoutMs > 0) ch.timer = setTimeout(() => this._joinTimedOut(topic, ch, ref), this.joinTimeoutMs);
  }

  _joinReply(topic, ref, payload) {
    const ch = this.channels.get(topic);
    if (ch === undefined || ch.joinRef !== ref || ch.state !== 'joining') return;
    clearTimeout(ch.timer);
    ch.timer = null;
    const status = payload && payload.status;
    if (status === 'ok') {
      ch.state = 'joined';
      ch.tries = 0;
      ch.joinedAt = now();
      this.hooks.joined(this, topic, payload.response);
    } else {
      ch.state = 'errored';
      const response = payload && payload.response !== undefined ? JSON.stringify(payload.response) : '';
      this.hooks.joinFailed(this, topic, `join ${status || 'bad reply'} ${response.slice(0, 60)}`.trim());
      if (this.reconnect) this._scheduleRejoin(topic, ch);
    }
  }

  _joinTimedOut(topic, ch, ref) {
    if (ch.joinRef !== ref || ch.state !== 'joining') return;
    ch.timer = null;
    this.pending.delete(ref);
    // phoenix.js: a leave for the timed-out join, then rejoin later.
    this.send([ref, this.makeRef(), topic, 'phx_leave', {}]);
    ch.state = 'errored';
    this.hooks.joinFailed(this, topic, 'join timeout');
    if (this.reconnect && this.isOpen) this._scheduleRejoin(topic, ch);
  }

  _scheduleRejoin(topic, ch) {
    clearTimeout(ch.timer);
    ch.timer = setTimeout(() => {
      ch.timer = null;
      ch.tries += 1;
      if (this.isOpen && ch.state === 'errored') this._sendJoin(topic, ch);
    }, rejoinAfterMs(ch.tries + 1));
  }

  _resetHeartbeat() {
    this._clearHeartbeat();
    if (this.heartbeatMs > 0) this.hbTimer = setTimeout(() => this._sendHeartbeat(), this.heartbeatMs);
  }

  _clearHeartbeat() {
    clearTimeout(this.hbTimer);
    clearTimeout(this.hbTimeoutTimer);
    this.hbTimer = null;
    this.hbTimeoutTimer = null;
    this.hbRef = null;
  }

  _sendHeartbeat() {
    this.hbTimer = null;
    if (!this.isOpen) return;
    this.hbRef = this.makeRef();
    this.hbAt = mono();
    this.send([null, this.hbRef, 'phoenix', 'heartbeat', {}]);
    this.hbTimeoutTimer = setTimeout(() => this._heartbeatTimedOut(), this.heartbeatMs);
  }

  _heartbeatTimedOut() {
    this.hbTimeoutTimer = null;
    if (this.hbRef === null) return;
    this.hbRef = null;
    this.hooks.heartbeatTimeout(this);
    // phoenix.js closes (1000, "heartbeat timeout") and reconnects without
    // waiting for the closing handshake.
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      ws.close(1000, 'heartbeat timeout');
      setTimeout(() => ws.terminate(), 1000).unref();
    }
    this.lastError = null;
    this._closed(1000, 'heartbeat timeout (client)');
  }
}

// -- a Socket.IO connection (the python-socketio peer) ---------------------------------
//
// Engine.IO 4 / Socket.IO 5 straight over the WebSocket transport
// (.../socket.io/?EIO=4&transport=websocket): the server's open packet 0{...},
// then "40" to connect to namespace "/", answered 40{...} (hooks.open);
// join = 42<id>["join",topic] acked 43<id>[...]; a push with an ack is
// 42<id>[event,payload]; a broadcast arrives as 42["broadcast",{...}]; the
// server's Engine.IO ping "2" is answered "3".  The same surface as Conn, for
// the `clients` subcommand.

class SioConn {
  constructor(url, hooks) {
    this.url = url;
    this.hooks = hooks;
    this.ws = null;
    this.ref = 0;
    this.topics = new Map(); // topic -> state
    this.pending = new Map(); // id -> {kind, topic, event, at}
    this.isOpen = false;
    this.stopped = false;
    this.lastError = null;
    this.deliveries = 0;
    this.data = {};
  }

  connect() {
    const ws = new WebSocket(this.url, { perMessageDeflate: false });
    this.ws = ws;
    ws.on('message', (data) => this._message(data));
    ws.on('error', (err) => { this.lastError = err; });
    ws.on('close', (code, reason) => {
      const wasOpen = this.isOpen;
      this.isOpen = false;
      this.hooks.close(this, { code, reason: String(reason || ''), wasOpen, error: this.lastError, byUs: this.stopped });
    });
    return this;
  }

  _message(data) {
    const c0 = data[0];
    if (c0 === 0x34) { // '4': a Socket.IO packet
      const c1 = data[1];
      if (c1 === 0x32) { // 42: an event (a broadcast)
        this.deliveries += 1;
        this.hooks.delivery(this, data);
      } else if (c1 === 0x33) { // 43<id>[...]: an ack
        let i = 2;
        let id = 0;
        while (i < data.length && data[i] >= 0x30 && data[i] <= 0x39) id = id * 10 + (data[i++] - 0x30);
        const pending = this.pending.get(id);
        if (pending === undefined) return;
        this.pending.delete(id);
        if (pending.kind === 'join') {
          this.topics.set(pending.topic, 'joined');
          this.hooks.joined(this, pending.topic, null);
        } else {
          this.hooks.reply(this, pending, { status: 'ok' });
        }
      } else if (c1 === 0x30) { // 40{"sid":...}: connected to the namespace
        this.isOpen = true;
        for (const [topic, state] of this.topics) if (state === 'joining') this._sendJoin(topic);
        this.hooks.open(this);
      }
    } else if (c0 === 0x30) { // 0{...}: the Engine.IO open packet
      this.ws.send('40');
    } else if (c0 === 0x32) { // 2: an Engine.IO ping
      this.ws.send('3');
    }
  }

  _sendJoin(topic) {
    const id = ++this.ref;
    this.pending.set(id, { kind: 'join', topic, event: 'join', at: mono() });
    this.ws.send('42' + id + JSON.stringify(['join', topic]));
  }

  join(topic) {
    this.topics.set(topic, 'joining');
    if (this.isOpen) this._sendJoin(topic);
  }

  joinedTo(topic) {
    return this.topics.get(topic) === 'joined';
  }

  push(topic, event, payload, kind = 'push') {
    const id = ++this.ref;
    this.pending.set(id, { kind, topic, event, at: mono() });
    this.ws.send('42' + id + JSON.stringify([event, payload]));
    return id;
  }

  cast(topic, event, payload) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send('42' + JSON.stringify([event, payload]));
    return true;
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.terminate();
  }
}

/**
 * Open `count` connections with at most `concurrency` handshakes in flight
 * (0: all at once): make(i) returns an unconnected Conn; settled(conn) must
 * be called by the workload once the connection is open and done with (or
 * failed) to start the next.
 */
function opener(count, concurrency, make) {
  let started = 0;
  const conns = [];
  const next = () => {
    if (started >= count) return;
    const conn = make(started++);
    conns.push(conn);
    conn.connect();
  };
  const first = concurrency > 0 ? Math.min(concurrency, count) : count;
  for (let i = 0; i < first; i++) next();
  return { conns, settled: () => { if (concurrency > 0) next(); } };
}

// -- clients: the harness-driven pool (fanout, cluster, yardstick) -------------------

function clientsMode(argv) {
  const o = parseOptions(argv, {
    url: [], triggerUrl: '', trigger: false, protocol: 'phoenix', clients: 100, noJoin: false,
    topic: 'ping', messageBytes: 100, concurrency: 200, timeout: 120, connectTimeout: 120, probe: false,
    heartbeatMs: HEARTBEAT_MS,
  });
  if (!o.url.length) throw new Error('--url is required');
  if (!['phoenix', 'socketio'].includes(o.protocol)) throw new Error(`unknown protocol ${o.protocol}`);
  const join = !o.noJoin;
  const make = (url) => (o.protocol === 'socketio' ? new SioConn(url, hooks) : new Conn(url, hooks, { heartbeatMs: o.heartbeatMs }));
  const plainPayload = sizedPayload(o.topic, o.messageBytes);
  const pushPayload = (i, latency) => (latency ? sizedPayload(o.topic, o.messageBytes, { i }) : plainPayload);

  let connected = 0;
  let joined = 0;
  let failed = 0;
  let closedEarly = 0;
  let ready = false;
  let quitting = false;
  const failures = {};
  const closeCodes = {};
  const serverErrors = {}; // error replies and channel errors, by reason
  const joinedPerUrl = o.url.map(() => 0);
  const connectStart = now();
  let trigger = null; // the client that pushes the broadcasts
  let triggerFailed = false;
  let probing = false;
  const probeSeen = new Set();

  // What the current command measures.
  let mode = null;
  let goAt = null;
  let cpuAtGo = null;
  let doneTimer = null;
  let finished = false;
  let deliveries = 0;
  let expected = Infinity;
  let firstDeliveryBytes = null;
  let triggerAt = null;
  let latency = false;
  let sentAt = null;
  let firstAt = null;
  let pushTimer = null;
  const latencies = new Samples();
  // round trip
  let rtDeadline = 0;
  let rtReplies = 0;
  let rtLate = 0;
  let rtOutstanding = 0;
  // join storm
  let joinSent = 0;
  let joinReplies = 0;
  let firstReplyAt = null;
  let lastAt = null;

  const hooks = {
    ...HOOKS,
    open(c) {
      connected += 1;
      if (join) c.join(o.topic);
      else checkReady();
      if (!c.data.trigger) pool.settled();
    },
    joined(c) {
      if (c.data.trigger) {
        trigger = c;
        checkReady();
        return;
      }
      joined += 1;
      joinedPerUrl[c.data.urlIndex] += 1;
      if (mode === 'join') {
        const t = now();
        if (firstReplyAt === null) firstReplyAt = t;
        lastAt = t;
        if (++joinReplies === joinSent) finish();
      } else {
        checkReady();
      }
    },
    joinFailed(c, topic, why) {
      bump(failures, why);
      if (c.data.trigger) triggerFailed = true;
      else failed += 1;
      checkReady();
    },
    delivery(c, data) {
      if (c.data.trigger) return;
      if (probing) {
        probeSeen.add(c.data.urlIndex);
        return;
      }
      if (mode !== 'fanout') return;
      if (firstDeliveryBytes === null) firstDeliveryBytes = data.length;
      if (latency) {
        const at = now();
        const i = JSON.parse(data)[4].i;
        latencies.add(at - sentAt[i]);
        if (firstAt[i] === 0) firstAt[i] = at;
      }
      if (++deliveries === expected) finish();
    },
    reply(c, pending) {
      if (mode !== 'roundtrip' || pending.kind !== 'ping') return;
      const t = mono();
      rtOutstanding -= 1;
      if (t <= rtDeadline) {
        latencies.add(t - pending.at);
        rtReplies += 1;
        sendPing(c);
      } else {
        rtLate += 1;
        if (rtOutstanding === 0) finish();
      }
    },
    push(c, message) {
      // An error reply to a push (a rate limit, say), or a channel closing.
      const [, , , event, payload] = message;
      if (event === 'phx_reply' && payload && payload.status !== 'ok') {
        bump(serverErrors, `${payload.status} ${JSON.stringify(payload.response || {}).slice(0, 60)}`);
      } else if (event === 'phx_error' || event === 'phx_close') {
        bump(serverErrors, event);
      }
    },
    close(c, info) {
      if (quitting) return;
      if (!info.wasOpen) {
        bump(failures, reasonOf(info.error));
        if (c.data.trigger) triggerFailed = true;
        else {
          failed += 1;
          pool.settled();
        }
        checkReady();
        return;
      }
      closedEarly += 1;
      bump(closeCodes, closeReason(info));
      if (!ready && !c.joinedTo(o.topic)) {
        if (c.data.trigger) triggerFailed = true;
        else failed += 1;
        checkReady();
      }
    },
  };

  const pool = opener(o.clients, o.concurrency, (i) => {
    const c = make(o.url[i % o.url.length]);
    c.data.urlIndex = i % o.url.length;
    return c;
  });
  const conns = () => (triggerConn ? [triggerConn, ...pool.conns] : pool.conns);
  let triggerConn = null;
  if (o.triggerUrl) {
    triggerConn = make(o.triggerUrl);
    triggerConn.data.trigger = true;
    triggerConn.connect();
  }

  function triggerReady() {
    return !o.triggerUrl || trigger !== null || triggerFailed;
  }

  function checkReady() {
    if (ready || probing) return;
    const settled = join ? joined + failed : connected + failed;
    if (settled < o.clients || !triggerReady()) return;
    if (o.probe && !probeSeen.size) startProbe();
    else reportReady();
  }

  // A cluster is ready when broadcasts cross it: broadcast until every URL got one.
  function startProbe() {
    const from = o.triggerUrl ? trigger : pool.conns.find((c) => c.joinedTo(o.topic));
    if (!from) return reportReady();
    probing = true;
    let k = 0;
    const tick = () => {
      if (probeSeen.size >= o.url.length || mono() - probeStart > o.connectTimeout * 1000) {
        // Let probes still on their way arrive before measuring anything.
        setTimeout(() => { probing = false; reportReady(); }, 300);
        return;
      }
      from.cast(o.topic, 'broadcast', { probe: k++ });
      setTimeout(tick, 100);
    };
    const probeStart = mono();
    tick();
  }

  function reportReady() {
    if (ready) return;
    ready = true;
    emit({
      event: 'ready', clients: o.clients, connected, joined, failed, failures, close_codes: closeCodes,
      joined_per_url: joinedPerUrl, trigger: o.triggerUrl ? Boolean(trigger) : null,
      probed: o.probe ? probeSeen.size : null, connect_seconds: (now() - connectStart) / 1000,
    });
  }
  setTimeout(() => reportReady(), o.connectTimeout * 1000).unref();

  function begin(kind, seconds) {
    if (mode !== null) {
      emit({ event: 'error', message: `${kind}: the generator already ran ${mode}` });
      return false;
    }
    mode = kind;
    goAt = now();
    cpuAtGo = process.cpuUsage();
    doneTimer = setTimeout(finish, (seconds || o.timeout) * 1000);
    return true;
  }

  function fanout(n, budget, interval, withLatency) {
    if (!begin('fanout', budget)) return;
    latency = withLatency;
    expected = joined * n;
    sentAt = new Float64Array(n);
    firstAt = new Float64Array(n);
    const from = o.triggerUrl ? trigger : (o.trigger ? pool.conns.find((c) => c.joinedTo(o.topic) && c.isOpen) : null);
    if (expected === 0) return finish();
    if (from === null || from === undefined) {
      if (o.triggerUrl || o.trigger) return finish();
      return; // another process triggers
    }
    const payloads = [];
    for (let i = 0; i < n; i++) payloads.push(pushPayload(i, latency));
    triggerAt = now();
    if (interval <= 0) {
      for (let i = 0; i < n; i++) {
        sentAt[i] = now();
        from.cast(o.topic, 'broadcast', payloads[i]);
      }
      return;
    }
    // One push every `interval` ms, on a schedule fixed from the first push.
    let i = 0;
    const tick = () => {
      pushTimer = null;
      const t = now();
      while (i < n && triggerAt + i * interval <= t + 0.1) {
        sentAt[i] = now();
        from.cast(o.topic, 'broadcast', payloads[i]);
        i += 1;
      }
      if (i < n) pushTimer = setTimeout(tick, Math.max(0, triggerAt + i * interval - now()));
    };
    tick();
  }

  function sendPing(c) {
    rtOutstanding += 1;
    c.push(o.topic, 'ping', {}, 'ping');
  }

  function roundtrip(seconds) {
    // The replies still on their way after the window get 30 s more.
    if (!begin('roundtrip', seconds + 30)) return;
    const live = pool.conns.filter((c) => c.joinedTo(o.topic) && c.isOpen);
    if (live.length === 0) return finish();
    rtDeadline = mono() + seconds * 1000;
    for (const c of live) sendPing(c);
  }

  function joinStorm() {
    if (!begin('join')) return;
    const todo = pool.conns.filter((c) => c.isOpen && !c.joinedTo(o.topic));
    joinSent = todo.length;
    if (joinSent === 0) return finish();
    triggerAt = now();
    for (const c of todo) c.join(o.topic);
  }

  function finish() {
    if (finished) return;
    finished = true;
    const endAt = now();
    clearTimeout(doneTimer);
    clearTimeout(pushTimer);
    const out = {
      event: 'done', mode, joined, go_at: goAt, trigger_at: triggerAt, end_at: endAt, ...cpuSince(cpuAtGo),
      closed_early: closedEarly, close_codes: closeCodes, failures, server_errors: serverErrors,
    };
    if (mode === 'fanout') {
      Object.assign(out, {
        expected, deliveries, missing: expected - deliveries, cut: deliveries < expected, last_at: endAt,
        first_delivery_bytes: firstDeliveryBytes,
      });
      if (latency) {
        const first = new Samples();
        for (let i = 0; i < sentAt.length; i++) if (firstAt[i] > 0) first.add(firstAt[i] - sentAt[i]);
        out.latency_ms = latencies.summary();
        out.first_latency_ms = first.summary();
      }
    } else if (mode === 'roundtrip') {
      const s = latencies.summary() || {};
      Object.assign(out, {
        replies: rtReplies, late_replies: rtLate, outstanding: rtOutstanding,
        p50_ms: s.p50 ?? null, p90_ms: s.p90 ?? null, p99_ms: s.p99 ?? null, max_ms: s.max ?? null,
        mean_ms: s.mean ?? null,
      });
    } else if (mode === 'join') {
      Object.assign(out, {
        sent: joinSent, replies: joinReplies, missing: joinSent - joinReplies, first_reply_at: firstReplyAt,
        last_at: lastAt,
      });
    }
    emit(out);
  }

  const quit = quitWith(conns);
  commands({
    fanout: (n, budget, interval, withLatency) =>
      fanout(parseInt(n, 10), parseFloat(budget) || 0, parseFloat(interval) || 0, withLatency === '1'),
    roundtrip: (seconds) => roundtrip(parseFloat(seconds)),
    join: () => joinStorm(),
  }, () => { quitting = true; quit(); });
}

// -- storm and herd ---------------------------------------------------------------------

function stormMode(argv) {
  const o = parseOptions(argv, {
    url: '', clients: 10000, concurrency: 0, timeout: 60, topic: 'ping', herd: false,
    setupConcurrency: 200,
  });
  if (!o.url) throw new Error('--url is required');
  return o.herd ? herd(o) : storm(o);
}

/** N clients connect and join at once; every one joins or fails with a reason. */
function storm(o) {
  const failures = {};
  const afterJoin = {};
  const joinMs = new Samples(); // join sent -> reply
  const connectMs = new Samples(); // connection started -> open
  const sinceGo = new Samples(); // go -> joined
  let joined = 0;
  let failedCount = 0;
  let joinedLate = 0; // after phoenix.js's 10 s join timeout
  let goAt = null;
  let lastJoinAt = null;
  let cpuAtGo = null;
  let finished = false;
  let deadline = null;
  let pool = { conns: [], settled: NOOP };

  const settle = (c, ok, why) => {
    if (c.data.settled) return;
    c.data.settled = true;
    if (ok) joined += 1;
    else {
      failedCount += 1;
      bump(failures, why);
    }
    pool.settled();
    if (joined + failedCount === o.clients) finish();
  };
  const hooks = {
    ...HOOKS,
    open(c) {
      c.data.openAt = mono();
      connectMs.add(c.data.openAt - c.data.startAt);
      c.join(o.topic);
    },
    joined(c) {
      const t = mono();
      const ms = t - c.data.openAt;
      joinMs.add(ms);
      if (ms > JOIN_TIMEOUT_MS) joinedLate += 1;
      lastJoinAt = now();
      sinceGo.add(lastJoinAt - goAt);
      c.data.ok = true;
      settle(c, true);
    },
    joinFailed(c, topic, why) {
      settle(c, false, why);
    },
    close(c, info) {
      if (c.stopped) return;
      if (c.data.settled) {
        if (c.data.ok) bump(afterJoin, closeReason(info));
        return;
      }
      settle(c, false, info.wasOpen ? `${closeReason(info)} before the join reply` : reasonOf(info.error));
    },
  };

  function go() {
    if (goAt !== null) return;
    goAt = now();
    cpuAtGo = process.cpuUsage();
    if (o.clients === 0) return finish();
    deadline = setTimeout(() => {
      for (const c of pool.conns) {
        if (!c.data.settled) settle(c, false, c.isOpen ? 'timeout (no join reply)' : 'timeout (not connected)');
      }
      for (let i = pool.conns.length; i < o.clients; i++) bump(failures, 'timeout (not started)');
      failedCount += o.clients - pool.conns.length;
      finish();
    }, o.timeout * 1000);
    pool = opener(o.clients, o.concurrency, () => {
      const c = new Conn(o.url, hooks);
      c.data.startAt = mono();
      return c;
    });
  }

  function finish() {
    if (finished) return;
    finished = true;
    clearTimeout(deadline);
    emit({
      event: 'done', clients: o.clients, joined, failed: failedCount, failures, closed_after_join: afterJoin,
      go_at: goAt, last_join_at: lastJoinAt, end_at: now(), joined_late: joinedLate,
      connect_ms: connectMs.summary(), join_ms: joinMs.summary(), joined_ms: sinceGo.summary(),
      ...cpuSince(cpuAtGo),
    });
  }

  emit({ event: 'ready', clients: o.clients });
  commands({ go }, quitWith(() => pool.conns));
}

/** N phoenix.js clients joined; when the server goes away, they reconnect and rejoin. */
function herd(o) {
  const failures = {}; // failed reconnect attempts, by reason
  const joinFailures = {};
  const closes = {};
  const rejoinMs = new Samples(); // each client: down -> rejoined
  let joinedAtStart = 0;
  let failedAtStart = 0;
  let down = 0;
  let rejoined = 0;
  let attempts = 0;
  let maxAttempts = 0;
  let firstDownAt = null;
  let lastRejoinAt = null;
  let ready = false;
  let finished = false;
  let timer = null;
  let cpuAtDown = null;

  const hooks = {
    ...HOOKS,
    open(c) {
      if (!ready) pool.settled();
    },
    joined(c) {
      if (!ready) {
        joinedAtStart += 1;
        checkReady();
        return;
      }
      if (c.data.downAt && !c.data.rejoinedAt) {
        c.data.rejoinedAt = now();
        lastRejoinAt = c.data.rejoinedAt;
        rejoinMs.add(c.data.rejoinedAt - c.data.downAt);
        rejoined += 1;
        check();
      }
    },
    joinFailed(c, topic, why) {
      bump(joinFailures, why);
      if (!ready && !c.data.failed) {
        c.data.failed = true;
        failedAtStart += 1;
        c.stop();
        checkReady();
      }
    },
    reconnect(c) {
      attempts += 1;
      c.data.attempts = (c.data.attempts || 0) + 1;
      if (c.data.attempts > maxAttempts) maxAttempts = c.data.attempts;
    },
    close(c, info) {
      if (c.stopped) return;
      if (!ready) {
        if (!info.wasOpen && !c.data.failed) {
          bump(failures, reasonOf(info.error));
          c.data.failed = true;
          failedAtStart += 1;
          c.stop();
          pool.settled();
          checkReady();
        }
        return;
      }
      if (info.wasOpen) {
        bump(closes, closeReason(info));
        if (!c.data.downAt) {
          c.data.downAt = now();
          down += 1;
          if (firstDownAt === null) {
            firstDownAt = c.data.downAt;
            cpuAtDown = process.cpuUsage();
            timer = setTimeout(finish, o.timeout * 1000);
          }
        } else if (c.data.rejoinedAt) {
          bump(closes, 'closed again after rejoining');
        }
      } else {
        bump(failures, reasonOf(info.error));
      }
    },
  };

  const pool = opener(o.clients, o.setupConcurrency, () => {
    const c = new Conn(o.url, hooks, { reconnect: true });
    c.join(o.topic);
    return c;
  });

  function checkReady() {
    if (ready) return;
    if (joinedAtStart + failedAtStart < o.clients) return;
    ready = true;
    emit({ event: 'ready', clients: o.clients, joined: joinedAtStart, failed: failedAtStart, failures, join_failures: joinFailures });
  }
  setTimeout(() => {
    if (!ready) {
      ready = true;
      emit({ event: 'ready', clients: o.clients, joined: joinedAtStart, failed: o.clients - joinedAtStart, failures, join_failures: joinFailures });
    }
  }, o.timeout * 1000).unref();

  function check() {
    if (down === joinedAtStart && rejoined === down) finish();
  }

  function finish() {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    emit({
      event: 'done', clients: joinedAtStart, went_down: down, rejoined, not_rejoined: joinedAtStart - rejoined,
      first_down_at: firstDownAt, last_rejoin_at: lastRejoinAt, end_at: now(), attempts, max_attempts: maxAttempts,
      attempt_failures: failures, join_failures: joinFailures, closes, rejoin_ms: rejoinMs.summary(),
      ...cpuSince(cpuAtDown),
    });
  }

  commands({}, quitWith(() => pool.conns));
}

// -- canary -----------------------------------------------------------------------------

/** One client that asks the server something every --interval ms and times the answers. */
function canaryMode(argv) {
  const o = parseOptions(argv, { url: '', topic: 'ping', interval: 100, kind: 'heartbeat', reconnect: false, timeout: 60 });
  if (!o.url) throw new Error('--url is required');
  const latency = new Samples();
  const afterRejoin = new Samples();
  const closes = {};
  let sent = 0;
  let replies = 0;
  let maxGap = 0;
  let lastReplyAt = null;
  let maxTimerLag = 0;
  let downAt = null;
  let rejoinedAt = null;
  let measuring = false;
  let ticker = null;
  let ready = false;

  const hooks = {
    ...HOOKS,
    joined(c) {
      if (!ready) {
        ready = true;
        emit({ event: 'ready', joined: true });
      } else if (downAt !== null && rejoinedAt === null) {
        rejoinedAt = now();
      }
    },
    joinFailed(c, topic, why) {
      if (!ready) {
        ready = true;
        emit({ event: 'ready', joined: false, why });
      }
    },
    reply(c, pending) {
      if (pending.kind !== 'canary' || !measuring) return;
      const t = mono();
      const ms = t - pending.at;
      latency.add(ms);
      if (rejoinedAt !== null) afterRejoin.add(ms);
      if (lastReplyAt !== null) maxGap = Math.max(maxGap, t - lastReplyAt);
      lastReplyAt = t;
      replies += 1;
    },
    close(c, info) {
      if (c.stopped) return;
      bump(closes, info.wasOpen ? closeReason(info) : reasonOf(info.error));
      if (info.wasOpen && measuring && downAt === null) downAt = now();
      if (!ready && !o.reconnect) {
        ready = true;
        emit({ event: 'ready', joined: false, why: closeReason(info) });
      }
    },
  };
  const conn = new Conn(o.url, hooks, { heartbeatMs: 0, reconnect: o.reconnect });
  conn.join(o.topic);
  conn.connect();
  setTimeout(() => {
    if (!ready) {
      ready = true;
      emit({ event: 'ready', joined: false, why: 'timeout' });
    }
  }, o.timeout * 1000).unref();

  function go() {
    if (measuring) return;
    measuring = true;
    lastReplyAt = mono();
    let due = mono() + o.interval;
    const tick = () => {
      const t = mono();
      maxTimerLag = Math.max(maxTimerLag, t - due);
      due += o.interval;
      if (due < t) due = t + o.interval; // never try to catch up
      ticker = setTimeout(tick, due - t);
      // phoenix.js sends nothing while its connection is down.
      if (!conn.isOpen) return;
      if (o.kind === 'ping') {
        if (!conn.joinedTo(o.topic)) return;
        conn.push(o.topic, 'ping', {}, 'canary');
      } else {
        conn.push('phoenix', 'heartbeat', {}, 'canary');
      }
      sent += 1;
    };
    ticker = setTimeout(tick, o.interval);
  }

  function report() {
    const t = mono();
    let oldest = 0;
    let unanswered = 0;
    for (const p of conn.pending.values()) {
      if (p.kind !== 'canary') continue;
      unanswered += 1;
      oldest = Math.max(oldest, t - p.at);
    }
    const s = latency.summary();
    emit({
      event: 'canary', kind: o.kind, interval_ms: o.interval, sent, replies, unanswered, oldest_unanswered_ms: oldest,
      latency_ms: s, max_ms: Math.max(s ? s.max : 0, oldest),
      max_gap_ms: Math.max(maxGap, lastReplyAt !== null ? t - lastReplyAt : 0),
      closes, down_at: downAt, rejoined_at: rejoinedAt, after_rejoin_ms: afterRejoin.summary(),
      timer_lag_max_ms: maxTimerLag,
    });
  }

  commands({ go, report }, () => { clearTimeout(ticker); conn.stop(); process.exit(0); });
}

// -- slow: stalled clients and a burst of broadcasts -----------------------------------
//
// Commands, each answered by one event:
//   stall          the stalled clients stop reading (their TCP sockets paused)
//                  and heartbeating -> "stalled"
//   broadcast      the trigger pushes --broadcasts "broadcast" events of
//                  --message-bytes (back to back, its socket's backpressure
//                  respected, or --rate a second); wait until every healthy
//                  client has them all, or nothing arrived for --settle s
//                  -> "broadcast-done"
//   resume         the stalled clients read again; wait until each closed or
//                  has everything, or nothing arrived for --settle s
//                  -> "resumed": how many the server had dropped, their close codes
//   close-stalled  terminate the stalled clients still open -> "closed-stalled"
//   fresh N        N new clients connect, join, leave and close -> "fresh-done"

function slowMode(argv) {
  const o = parseOptions(argv, {
    url: '', healthy: 200, stalled: 1000, broadcasts: 2000, messageBytes: 4096, rate: 0, topic: 'ping',
    concurrency: 200, settle: 5, timeout: 120,
  });
  if (!o.url) throw new Error('--url is required');
  const failures = {};
  const healthy = [];
  const stalled = [];
  let trigger = null;
  let joined = 0;
  let failed = 0;
  let ready = false;
  const total = o.healthy + o.stalled + 1;
  let onArrival = NOOP;

  const hooks = {
    ...HOOKS,
    open(c) { c.join(o.topic); },
    joined(c) {
      if (ready) return;
      joined += 1;
      pool.settled();
      checkReady();
    },
    joinFailed(c, topic, why) {
      if (ready) return;
      bump(failures, why);
      failed += 1;
      pool.settled();
      checkReady();
    },
    delivery(c) {
      onArrival(c);
    },
    close(c, info) {
      if (c.stopped) return;
      c.data.closed = { code: info.code, reason: info.reason, error: info.error ? reasonOf(info.error) : null, at: now(), deliveries: c.deliveries };
      if (!ready && !c.joinedTo(o.topic) && !c.data.failed) {
        c.data.failed = true;
        bump(failures, info.wasOpen ? closeReason(info) : reasonOf(info.error));
        failed += 1;
        pool.settled();
        checkReady();
      }
      onArrival(c);
    },
  };

  const pool = opener(total, o.concurrency, (i) => {
    const c = new Conn(o.url, hooks);
    if (i === 0) trigger = c;
    else if (i <= o.healthy) healthy.push(c);
    else stalled.push(c);
    return c;
  });
  const fresh = [];

  function checkReady() {
    if (ready || joined + failed < total) return;
    ready = true;
    emit({
      event: 'ready', trigger: trigger.joinedTo(o.topic),
      healthy_joined: healthy.filter((c) => c.joinedTo(o.topic)).length,
      stalled_joined: stalled.filter((c) => c.joinedTo(o.topic)).length, failures,
    });
  }

  function stall() {
    for (const c of stalled) c.pause();
    emit({ event: 'stalled', clients: stalled.length });
  }

  /** Wait until done() or nothing arrived for --settle s; then report(). */
  function waitQuiet(done, report) {
    let last = mono();
    let timer = null;
    const deadline = mono() + o.timeout * 1000;
    onArrival = () => {
      last = mono();
      if (done()) finish();
    };
    const finish = () => {
      onArrival = NOOP;
      clearTimeout(timer);
      report();
    };
    const check = () => {
      if (done() || mono() - last > o.settle * 1000 || mono() > deadline) finish();
      else timer = setTimeout(check, 100);
    };
    check();
  }

  function broadcast() {
    const base = new Map(healthy.map((c) => [c, c.deliveries]));
    for (const c of stalled) c.data.base = c.deliveries;
    const payload = sizedPayload(o.topic, o.messageBytes);
    let sent = 0;
    let triggerClosed = null;
    const startAt = now();
    const cpu0 = process.cpuUsage();
    let sentAt = null;
    const got = (c) => c.deliveries - base.get(c);
    const allIn = () => sentAt !== null && healthy.every((c) => c.data.closed || got(c) >= sent);
    const send = () => {
      if (!trigger.isOpen) {
        triggerClosed = triggerClosed || { sent, ...(trigger.data.closed || {}) };
        return sendingDone();
      }
      const sock = trigger.ws._socket;
      const batch = o.rate > 0 ? Math.max(1, Math.round(o.rate / 100)) : 100;
      for (let i = 0; i < batch && sent < o.broadcasts; i++) {
        trigger.cast(o.topic, 'broadcast', payload);
        sent += 1;
        if (o.rate <= 0 && sock.writableNeedDrain) {
          sock.once('drain', send);
          return;
        }
      }
      if (sent >= o.broadcasts) return sendingDone();
      if (o.rate > 0) setTimeout(send, 10);
      else setImmediate(send);
    };
    const sendingDone = () => {
      sentAt = now();
      waitQuiet(allIn, () => {
        const counts = healthy.map(got);
        const closed = {};
        for (const c of healthy) if (c.data.closed) bump(closed, c.data.closed.error || `closed ${c.data.closed.code}`);
        if (!trigger.isOpen && !triggerClosed) triggerClosed = { sent, ...(trigger.data.closed || {}) };
        emit({
          event: 'broadcast-done', sent, broadcasts: o.broadcasts, trigger_closed: triggerClosed,
          sending_seconds: (sentAt - startAt) / 1000, seconds: (now() - startAt) / 1000,
          healthy: healthy.length, healthy_got_all: counts.filter((n) => n >= sent).length,
          healthy_min: counts.length ? Math.min(...counts) : null, healthy_median: median(counts),
          healthy_max: counts.length ? Math.max(...counts) : null, healthy_closed: closed,
          ...cpuSince(cpu0),
        });
      });
    };
    send();
  }

  function resume() {
    const target = o.broadcasts;
    const got = (c) => c.deliveries - (c.data.base || 0);
    for (const c of stalled) c.resume();
    waitQuiet(() => stalled.every((c) => c.data.closed || got(c) >= target), () => {
      const codes = {};
      let dropped = 0;
      for (const c of stalled) {
        if (!c.data.closed) continue;
        dropped += 1;
        const d = c.data.closed;
        bump(codes, d.error ? `${d.code} (${d.error})` : `${d.code}${d.reason ? ' ' + d.reason : ''}`);
      }
      const counts = stalled.map(got);
      emit({
        event: 'resumed', stalled: stalled.length, dropped, close_codes: codes, still_open: stalled.length - dropped,
        got_all: counts.filter((n) => n >= target).length, deliveries_min: counts.length ? Math.min(...counts) : null,
        deliveries_median: median(counts), deliveries_max: counts.length ? Math.max(...counts) : null,
      });
    });
  }

  function closeStalled() {
    let n = 0;
    for (const c of stalled) {
      if (!c.data.closed) n += 1;
      c.stop();
    }
    emit({ event: 'closed-stalled', terminated: n });
  }

  function freshRound(count) {
    const n = parseInt(count, 10) || 0;
    const out = { joined: 0, left: 0, failed: 0, failures: {} };
    let settled = 0;
    const startAt = now();
    const done = (c, why) => {
      if (c.data.settled) return;
      c.data.settled = true;
      if (why) {
        out.failed += 1;
        bump(out.failures, why);
      }
      c.stop(true);
      round.settled();
      if (++settled === n) emit({ event: 'fresh-done', clients: n, ...out, seconds: (now() - startAt) / 1000 });
    };
    const freshHooks = {
      ...HOOKS,
      open(c) { c.join(o.topic); },
      joined(c) {
        out.joined += 1;
        c.leave(o.topic);
      },
      joinFailed(c, topic, why) { done(c, why); },
      reply(c, pending) {
        if (pending.kind === 'leave') {
          out.left += 1;
          done(c, null);
        }
      },
      close(c, info) { if (!c.stopped) done(c, info.wasOpen ? closeReason(info) : reasonOf(info.error)); },
    };
    if (n === 0) return emit({ event: 'fresh-done', clients: 0, ...out, seconds: 0 });
    const round = opener(n, o.concurrency, () => new Conn(o.url, freshHooks));
    fresh.push(...round.conns);
  }

  commands({
    stall, broadcast, resume, 'close-stalled': closeStalled, fresh: freshRound,
  }, quitWith(() => [...pool.conns, ...fresh]));
}

// -- flood: one client pushes as fast as its socket takes it ---------------------------

function floodMode(argv) {
  const o = parseOptions(argv, { url: '', seconds: 30, topic: 'ping', event: 'ping', batch: 200, timeout: 60 });
  if (!o.url) throw new Error('--url is required');
  const replies = {};
  const pushes = {};
  let ok = 0;
  let sent = 0;
  let flooding = false;
  let goAt = null;
  let goMono = 0;
  let closed = null;
  let closedMono = null;
  let cpu0 = null;

  const hooks = {
    ...HOOKS,
    joined() { emit({ event: 'ready', joined: true }); },
    joinFailed(c, topic, why) { emit({ event: 'ready', joined: false, why }); },
    push(c, message) {
      const event = message[3];
      if (event === 'phx_reply') {
        const payload = message[4] || {};
        if (payload.status === 'ok') ok += 1;
        else bump(replies, `${payload.status} ${JSON.stringify(payload.response || {}).slice(0, 60)}`);
      } else if (event === o.event && message[1] !== null) {
        ok += 1; // a floor or a peer echoes the push as its answer
      } else {
        bump(pushes, `${event} ${JSON.stringify(message[4] || {}).slice(0, 60)}`);
      }
    },
    close(c, info) {
      if (c.stopped) return;
      closedMono = mono();
      closed = {
        at_seconds: goAt === null ? null : (mono() - goMono) / 1000, code: info.code, reason: info.reason,
        error: info.error ? reasonOf(info.error) : null, sent_before: sent,
      };
      if (goAt === null) emit({ event: 'ready', joined: false, why: closeReason(info) });
    },
  };
  const flooder = new Conn(o.url, hooks);
  flooder.join(o.topic);
  flooder.connect();

  function pump() {
    if (!flooding || !flooder.isOpen) return;
    const sock = flooder.ws._socket;
    for (let i = 0; i < o.batch; i++) {
      flooder.cast(o.topic, o.event, {});
      sent += 1;
      if (sock.writableNeedDrain) {
        sock.once('drain', pump);
        return;
      }
    }
    setImmediate(pump);
  }

  function go() {
    if (goAt !== null) return;
    goAt = now();
    goMono = mono();
    cpu0 = process.cpuUsage();
    flooding = true;
    pump();
    setTimeout(() => {
      flooding = false;
      const stoppedMono = mono();
      const okInWindow = ok;
      // The window ends when the flood stops, or when the server closed the flooder.
      const window = ((closedMono !== null ? Math.min(closedMono, stoppedMono) : stoppedMono) - goMono) / 1000;
      // Replies still on their way: 2 s more.
      setTimeout(() => {
        emit({
          event: 'done', seconds: o.seconds, sent, replies_ok: ok, replies_other: replies, pushes,
          answered_per_s: okInWindow / Math.max(window, 1e-3), sent_per_s: sent / Math.max(window, 1e-3),
          window_seconds: window, closed, go_at: goAt, ...cpuSince(cpu0),
        });
      }, 2000);
    }, o.seconds * 1000);
  }

  commands({ go }, () => { flooder.stop(); process.exit(0); });
}

// -- soak: a long run against a cluster --------------------------------------------------
//
// Against every --url (one per node): --subscribers clients joined to --topic
// for the whole run (phoenix.js clients: heartbeats, reconnect, rejoin); one
// sender per node that pushes a "broadcast" every --interval ms carrying
// {s: sender, q: sequence}; --churners clients per node that, over and over,
// connect, join a topic of their own, push "ping" --pings times (awaiting each
// reply), leave, close and pause 0 to --pause ms.  A broadcast is expected at
// every subscriber joined when it was sent (all nodes); the delivery ratio is
// over broadcasts sent more than --settle ms ago.

function soakMode(argv) {
  const o = parseOptions(argv, {
    url: [], subscribers: 100, churners: 20, interval: 200, topic: 'ping:soak', messageBytes: 200, pings: 3,
    pause: 500, settle: 5000, replyTimeout: 10000,
  });
  if (!o.url.length) throw new Error('--url is required');
  const errors = {};
  const replyMs = new Samples();
  const totals = { expected: 0, delivered: 0, broadcasts: 0, cycles: 0, pings: 0, replies: 0, errors: 0 };
  let window = null;
  const resetWindow = () => {
    window = { expected: 0, delivered: 0, broadcasts: 0, cycles: 0, pings: 0, replies: 0, errors: {} };
    replyMs.reset();
  };
  resetWindow();
  const error = (why) => {
    bump(errors, why);
    bump(window.errors, why);
    totals.errors += 1;
  };
  const inFlight = new Map(); // "s:q" -> {at, expected, delivered}
  const subscribers = [];
  const senders = [];
  const churners = new Set();

  const subscriberHooks = {
    ...HOOKS,
    delivery(c, data) {
      const payload = JSON.parse(data)[4];
      const b = inFlight.get(`${payload.s}:${payload.q}`);
      // Counted only where it was expected: this client was joined when it was sent.
      if (b !== undefined && c.data.joinedAt !== 0 && c.data.joinedAt <= b.at) b.delivered += 1;
    },
    joined(c) { c.data.joinedAt = now(); },
    joinFailed(c, topic, why) { error(`subscriber ${why}`); },
    heartbeatTimeout() { error('subscriber heartbeat timeout'); },
    close(c, info) {
      c.data.joinedAt = 0;
      if (!c.stopped) error(`subscriber ${info.wasOpen ? closeReason(info) : reasonOf(info.error)}`);
    },
  };
  const senderHooks = {
    ...subscriberHooks,
    delivery: NOOP,
    joinFailed(c, topic, why) { error(`sender ${why}`); },
    heartbeatTimeout() { error('sender heartbeat timeout'); },
    close(c, info) {
      c.data.joinedAt = 0;
      if (!c.stopped) error(`sender ${info.wasOpen ? closeReason(info) : reasonOf(info.error)}`);
    },
  };

  o.url.forEach((url, node) => {
    for (let i = 0; i < o.subscribers; i++) {
      const c = new Conn(url, subscriberHooks, { reconnect: true });
      c.data.joinedAt = 0;
      c.join(o.topic);
      subscribers.push(c.connect());
    }
    const s = new Conn(url, senderHooks, { reconnect: true });
    s.data = { joinedAt: 0, node, q: 0 };
    s.join(o.topic);
    senders.push(s.connect());
  });

  const sendTimer = setInterval(() => {
    const at = now();
    let live = 0;
    for (const c of subscribers) if (c.data.joinedAt !== 0) live += 1;
    for (const s of senders) {
      if (!s.joinedTo(o.topic)) continue;
      const q = s.data.q++;
      inFlight.set(`${s.data.node}:${q}`, { at, expected: live, delivered: 0 });
      s.cast(o.topic, 'broadcast', sizedPayload(o.topic, o.messageBytes, { s: s.data.node, q }));
    }
  }, o.interval);

  function settle(all) {
    const cutoff = now() - o.settle;
    for (const [key, b] of inFlight) {
      if (!all && b.at > cutoff) continue;
      inFlight.delete(key);
      window.broadcasts += 1;
      window.expected += b.expected;
      window.delivered += Math.min(b.delivered, b.expected);
      totals.broadcasts += 1;
      totals.expected += b.expected;
      totals.delivered += Math.min(b.delivered, b.expected);
    }
  }

  function churn(node, k) {
    const topic = `ping:churn:${node}:${k}`;
    let pings = 0;
    let timer = null;
    const end = (why) => {
      clearTimeout(timer);
      if (why) error(`churn ${why}`);
      c.stop(true);
      churners.delete(c);
      setTimeout(() => churn(node, k), Math.random() * o.pause);
    };
    const arm = (what) => {
      clearTimeout(timer);
      timer = setTimeout(() => end(`${what} timeout`), o.replyTimeout);
    };
    const ping = () => {
      arm('reply');
      pings += 1;
      window.pings += 1;
      totals.pings += 1;
      c.push(topic, 'ping', {}, 'ping');
    };
    const c = new Conn(o.url[node], {
      ...HOOKS,
      open() { arm('join'); c.join(topic); },
      joined() { ping(); },
      joinFailed(cc, t, why) { end(why); },
      reply(cc, pending, payload) {
        if (pending.kind === 'ping') {
          replyMs.add(mono() - pending.at);
          window.replies += 1;
          totals.replies += 1;
          if (payload.status !== 'ok') return end(`ping ${payload.status}`);
          if (pings < o.pings) ping();
          else {
            arm('leave');
            c.leave(topic);
          }
        } else if (pending.kind === 'leave') {
          window.cycles += 1;
          totals.cycles += 1;
          end(null);
        }
      },
      close(cc, info) { if (!c.stopped) end(info.wasOpen ? closeReason(info) : reasonOf(info.error)); },
    });
    churners.add(c);
    c.connect();
  }
  o.url.forEach((url, node) => {
    for (let k = 0; k < o.churners; k++) setTimeout(() => churn(node, k), Math.random() * 1000);
  });

  let cpuAt = process.cpuUsage();
  let windowStart = now();
  function stats() {
    settle(false);
    const joinedNow = subscribers.filter((c) => c.data.joinedAt !== 0).length;
    emit({
      event: 'stats', seconds: (now() - windowStart) / 1000, subscribers: subscribers.length, joined_now: joinedNow,
      window: { ...window, ratio: window.expected ? window.delivered / window.expected : null, reply_ms: replyMs.summary() },
      totals: { ...totals, ratio: totals.expected ? totals.delivered / totals.expected : null }, errors,
      in_flight: inFlight.size, churners_now: churners.size, ...cpuSince(cpuAt),
    });
    resetWindow();
    cpuAt = process.cpuUsage();
    windowStart = now();
  }

  commands({ stats }, () => {
    clearInterval(sendTimer);
    for (const c of [...subscribers, ...senders, ...churners]) c.stop();
    process.exit(0);
  });
}

// -- main -----------------------------------------------------------------------------

const SUBCOMMANDS = {
  clients: clientsMode,
  storm: stormMode,
  canary: canaryMode,
  slow: slowMode,
  flood: floodMode,
  soak: soakMode,
};

function main() {
  const [name, ...argv] = process.argv.slice(2);
  const run = SUBCOMMANDS[name];
  if (run === undefined) {
    process.stderr.write(`usage: node loadgen.js {${Object.keys(SUBCOMMANDS).join(',')}} [--option value ...]\n`);
    process.exit(2);
  }
  run(argv);
}

main();
