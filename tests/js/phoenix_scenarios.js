'use strict';
// Drives the real phoenix.js client (npm `phoenix`) under Node against a
// twisted_phoenix server, and prints one JSON object per line for everything
// it observes; tests/test_phoenixjs.py and tests/test_tls.py assert on them.
//
//   node phoenix_scenarios.js SCENARIO BASE_URL [OPTIONS_JSON]
//
// BASE_URL is e.g. ws://127.0.0.1:4000 (the scenario appends /socket etc.).
// OPTIONS_JSON: {"vsn": "1.0.0" | "2.0.0", "transport": "websocket" | "longpoll",
// ...scenario options}.  With "longpoll" the client uses phoenix.js's own
// LongPoll transport (Node 20's fetch), frames being its messages and posts.
// "origin" sends that Origin header (as a browser would), "headers" more
// headers, on both transports; "localAddress" binds a WebSocket's source address.
//
// Printed events ("sock" names the client socket, "topic" the channel):
//   {"ev":"open"|"error"|"close", ...}      socket state (close has code, reason)
//   {"ev":"upgrade","protocol":P}           Sec-WebSocket-Protocol the server chose
//   {"ev":"frame","dir":"in"|"out","text":T} every text frame (WebSocket) or
//                                           long-poll message/post line, verbatim
//   {"ev":"join","status":S,"response":R,"join_ref":J}   join replies (each rejoin too)
//   {"ev":"reply","label":L,"event":E,"status":"ok"|"error"|"timeout","response":R}
//   {"ev":"push","event":E,"payload":P}     server pushes and broadcasts on a channel
//   {"ev":"chan_error"|"chan_close","payload":P}
//   {"ev":"state",...}, then {"ev":"scenario_end"} (the client then disconnects) and
//   {"ev":"done"}; on failure {"ev":"fail","reason":...} and exit code 1.
// Every event carries "t": milliseconds since the script started.

const { Socket, LongPoll } = require('phoenix');
const WebSocket = require('ws');

const [scenarioName, baseUrl, rawOptions] = process.argv.slice(2);
const O = JSON.parse(rawOptions || '{}');
const VSN = O.vsn || '2.0.0';
const LONGPOLL = O.transport === 'longpoll';
const T0 = Date.now();

// The V1 JSON-object format, as phoenix.js 1.3-era clients spoke it
// (phoenix.js 1.8 only ships the V2 array serializer).
const V1Serializer = {
  encode(msg, callback) {
    return callback(JSON.stringify({
      topic: msg.topic, event: msg.event, payload: msg.payload, ref: msg.ref, join_ref: msg.join_ref,
    }));
  },
  decode(rawPayload, callback) {
    const msg = JSON.parse(rawPayload);
    return callback({
      join_ref: msg.join_ref === undefined ? null : msg.join_ref,
      ref: msg.ref, topic: msg.topic, event: msg.event, payload: msg.payload,
    });
  },
};

const PUSH_EVENTS = ['broadcast', 'send_ping', 'new_token', 'news'];
const events = [];
const waiters = [];
const sockets = [];

function emit(ev) {
  ev.t = Date.now() - T0;
  events.push(ev);
  process.stdout.write(JSON.stringify(ev) + '\n');
  for (const w of waiters.slice()) {
    if (w.cond()) {
      waiters.splice(waiters.indexOf(w), 1);
      clearTimeout(w.timer);
      w.resolve();
    }
  }
}

function fail(reason) {
  emit({ ev: 'fail', reason: String(reason && reason.stack ? reason.stack : reason) });
  process.exit(1);
}

function matches(ev, pattern) {
  return Object.keys(pattern).every((k) => ev[k] === pattern[k]);
}

function count(pattern) {
  return events.filter((ev) => matches(ev, pattern)).length;
}

// Resolves once cond() holds; rejects after ms (every wait is bounded).
function waitUntil(cond, what, ms = 5000) {
  return new Promise((resolve, reject) => {
    if (cond()) return resolve();
    const w = { cond, resolve };
    w.timer = setTimeout(() => {
      waiters.splice(waiters.indexOf(w), 1);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    waiters.push(w);
  });
}

function waitCount(pattern, n = 1, ms = 5000) {
  return waitUntil(() => count(pattern) >= n, `${n} x ${JSON.stringify(pattern)}`, ms);
}

// Only for non-events: give the client time to do something it must not do.
function settle(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// The parsed form of a frame, for waits (tests parse frames themselves).
function parseFrame(text) {
  const value = JSON.parse(text);
  if (Array.isArray(value)) {
    const [join_ref, ref, topic, event, payload] = value;
    return { join_ref, ref, topic, event, payload };
  }
  return value;
}

// The headers every request carries: O.headers, and Origin from O.origin.
function extraHeaders() {
  return { ...(O.headers || {}), ...(O.origin ? { Origin: O.origin } : {}) };
}

function recordingTransport(name) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: extraHeaders(), ...(O.localAddress ? { localAddress: O.localAddress } : {}) });
      emit({ ev: 'connecting', sock: name, url });
      this.on('upgrade', (res) => {
        emit({ ev: 'upgrade', sock: name, protocol: res.headers['sec-websocket-protocol'] || null });
      });
      this.on('message', (data, isBinary) => {
        emit({ ev: 'frame', sock: name, dir: 'in', binary: isBinary, text: isBinary ? data.toString('hex') : data.toString('utf8') });
      });
    }

    send(data, ...rest) {
      const binary = typeof data !== 'string';
      emit({ ev: 'frame', sock: name, dir: 'out', binary, text: binary ? Buffer.from(data).toString('hex') : data });
      return super.send(data, ...rest);
    }
  };
}

// phoenix.js's LongPoll, recording what it receives and posts.
function recordingLongPoll(name) {
  return class RecordingLongPoll extends LongPoll {
    constructor(endPoint, protocols) {
      super(endPoint, protocols);
      emit({ ev: 'connecting', sock: name, url: endPoint });
    }

    set onmessage(handler) {
      this.messageHandler = handler;
    }

    get onmessage() {
      return (event) => {
        emit({ ev: 'frame', sock: name, dir: 'in', binary: false, text: event.data });
        return this.messageHandler(event);
      };
    }

    send(body) {
      const binary = typeof body !== 'string';
      emit({ ev: 'frame', sock: name, dir: 'out', binary, text: binary ? Buffer.from(body).toString('hex') : body });
      return super.send(body);
    }

    ajax(method, headers, ...rest) {
      this.method = method;
      return super.ajax(method, { ...headers, ...extraHeaders() }, ...rest);
    }

    // With O.ports, each poll and each post goes to the next port in turn (a
    // load balancer without sticky sessions in front of a cluster).
    endpointURL() {
      let url = super.endpointURL();
      if (O.ports) {
        this.requests = this.requests || {};
        const n = this.requests[this.method] = (this.requests[this.method] || 0) + 1;
        url = url.replace(/^(https?:\/\/[^/:]+):\d+/, `$1:${O.ports[n % O.ports.length]}`);
      }
      const port = Number(new URL(url).port);
      emit({ ev: 'request', sock: name, method: this.method, port });
      return url;
    }
  };
}

function connect(name, path, opts = {}) {
  const socketOpts = {
    transport: LONGPOLL ? recordingLongPoll(name) : recordingTransport(name),
    vsn: VSN,
    params: opts.params || {},
    timeout: opts.timeout || 5000,
    heartbeatIntervalMs: opts.heartbeatIntervalMs || 30000,
    rejoinAfterMs: () => 100,
    reconnectAfterMs: () => 100,
  };
  if (VSN.startsWith('1.')) {
    socketOpts.encode = V1Serializer.encode;
    socketOpts.decode = V1Serializer.decode;
  }
  if (opts.authToken !== undefined) socketOpts.authToken = opts.authToken;
  const sock = new Socket(baseUrl + path, socketOpts);
  sock.onOpen(() => emit({ ev: 'open', sock: name }));
  sock.onError((error) => {
    // A WebSocket error is an event; a LongPoll error is the status (403) or "timeout".
    const message = typeof error === 'number' || typeof error === 'string'
      ? `long-poll status ${error}`
      : error && (error.message || (error.error && error.error.message));
    emit({ ev: 'error', sock: name, message: message || null });
  });
  sock.onClose((event) => {
    emit({
      ev: 'close', sock: name, code: event ? event.code : null,
      reason: event && event.reason ? String(event.reason) : '', wasClean: event ? !!event.wasClean : null,
    });
  });
  sock.scenarioName = name;
  sock.connect();
  sockets.push(sock);
  return sock;
}

function join(sock, topic, params = {}) {
  const name = sock.scenarioName;
  const channel = sock.channel(topic, params);
  channel.onError((payload) => emit({ ev: 'chan_error', sock: name, topic, payload: payload === undefined ? null : payload }));
  channel.onClose((payload) => emit({ ev: 'chan_close', sock: name, topic, payload: payload === undefined ? null : payload }));
  for (const event of PUSH_EVENTS) {
    channel.on(event, (payload) => emit({ ev: 'push', sock: name, topic, event, payload }));
  }
  const joined = (status) => (response) => {
    emit({ ev: 'join', sock: name, topic, status, response: response === undefined ? null : response, join_ref: channel.joinRef() });
  };
  channel.join().receive('ok', joined('ok')).receive('error', joined('error')).receive('timeout', joined('timeout'));
  return channel;
}

function joinResult(sock, topic, n = 1, ms = 5000) {
  return waitCount({ ev: 'join', sock: sock.scenarioName, topic }, n, ms);
}

// Pushes and returns a promise of the reply (or the push timeout).
function push(sock, channel, event, payload, label, timeout) {
  const name = sock.scenarioName;
  const p = channel.push(event, payload, timeout);
  const replied = (status) => (response) => {
    emit({ ev: 'reply', sock: name, topic: channel.topic, event, label, status, response: response === undefined ? null : response });
  };
  p.receive('ok', replied('ok')).receive('error', replied('error')).receive('timeout', replied('timeout'));
  return waitCount({ ev: 'reply', label }, 1, (timeout || 5000) + 3000);
}

function pushCount(sock, topic, event) {
  return { ev: 'push', sock: sock.scenarioName, topic, event };
}

function heartbeatReplies(name) {
  return events.filter((ev) => ev.ev === 'frame' && ev.sock === name && ev.dir === 'in' && !ev.binary
    && parseFrame(ev.text).topic === 'phoenix' && parseFrame(ev.text).event === 'phx_reply').length;
}

// A socket that must never open: waits for `n` failed attempts.
async function neverOpens(name, path, opts, n = 2) {
  const sock = connect(name, path, opts);
  join(sock, opts.topic || 'ping');
  await waitUntil(() => count({ ev: 'error', sock: name }) >= n && count({ ev: 'close', sock: name }) >= n,
    `${n} failed connection attempts of ${name}`, 8000);
  sock.disconnect();
}

const scenarios = {
  // PingChannel: join, ping, ping:PHRASE, pong (no reply), param_ping; ping:* topics.
  async ping() {
    const s = connect('a', '/socket');
    const ping = join(s, 'ping');
    await joinResult(s, 'ping');
    await push(s, ping, 'ping', {}, 'ping');
    await push(s, ping, 'ping:hello world', {}, 'ping_phrase');
    await push(s, ping, 'pong', {}, 'pong', 300);
    await push(s, ping, 'param_ping', { error: true }, 'param_ping_error');
    await push(s, ping, 'param_ping', { error: false, nested: { list: [1, 2.5, 'é'], none: null } }, 'param_ping_ok');
    const lobby = join(s, 'ping:lobby');
    await joinResult(s, 'ping:lobby');
    await push(s, lobby, 'ping', {}, 'lobby_ping');
    await push(s, lobby, 'ping:lobby phrase', {}, 'lobby_phrase');
  },

  // ding: reply, then phx_close; the client must not rejoin.
  async ding() {
    const s = connect('a', '/socket');
    const ping = join(s, 'ping');
    const other = join(s, 'ping:other');
    await joinResult(s, 'ping');
    await joinResult(s, 'ping:other');
    await push(s, ping, 'ding', {}, 'ding');
    await waitCount({ ev: 'chan_close', sock: 'a', topic: 'ping' });
    await settle(400); // > rejoinAfterMs (100 ms): a rejoin would have been sent by now
    await push(s, other, 'ping', {}, 'other_ping');
    emit({ ev: 'state', sock: 'a', topic: 'ping', state: ping.state, channels: s.channels.map((c) => c.topic) });
  },

  // An event PingChannel does not handle crashes the channel; phoenix.js rejoins.
  async crash() {
    const s = connect('a', '/socket');
    const ping = join(s, 'ping');
    const side = join(s, 'ping:side');
    await joinResult(s, 'ping');
    await joinResult(s, 'ping:side');
    push(s, ping, 'no_such_event', { x: 1 }, 'crash', 1000).catch(() => {});
    await waitCount({ ev: 'chan_error', sock: 'a', topic: 'ping' });
    await joinResult(s, 'ping', 2);
    await push(s, ping, 'ping', {}, 'ping_after_rejoin');
    await push(s, side, 'ping', {}, 'side_ping');
    emit({ ev: 'state', sock: 'a', topic: 'ping', state: ping.state, connected: s.isConnected() });
  },

  // broadcast reaches every client on the topic, the sender included.
  async broadcast() {
    const a = connect('a', '/socket');
    const b = connect('b', '/socket');
    const pa = join(a, 'ping');
    join(b, 'ping');
    await joinResult(a, 'ping');
    await joinResult(b, 'ping');
    const replied = push(a, pa, 'broadcast', { body: 'hi', n: 1 }, 'broadcast', 300);
    await waitCount(pushCount(a, 'ping', 'broadcast'));
    await waitCount(pushCount(b, 'ping', 'broadcast'));
    await replied;
  },

  // wild:A:B joins only when B = 2A.
  async wildcard() {
    const s = connect('a', '/socket');
    const good = join(s, 'wild:1:2');
    await joinResult(s, 'wild:1:2');
    await push(s, good, 'ping', {}, 'wild_ping');
    for (const topic of ['wild:1:3', 'wild:a:b', 'wild:1:2:4']) {
      const ch = join(s, topic);
      await joinResult(s, topic);
      ch.leave(); // phoenix.js would retry an errored join
    }
    join(s, 'wild:21:42');
    await joinResult(s, 'wild:21:42');
  },

  // Heartbeats every 100 ms are answered and keep the connection open.
  // phoenix.js sends none over LongPoll (skipHeartbeat): Socket.ping sends them.
  async heartbeat() {
    const s = connect('a', '/socket', { heartbeatIntervalMs: 100 });
    const ping = join(s, 'ping');
    await joinResult(s, 'ping');
    let pinger = null;
    if (LONGPOLL) pinger = setInterval(() => s.ping(() => {}), 100);
    await waitUntil(() => heartbeatReplies('a') >= 4, 'four heartbeat replies', 5000);
    clearInterval(pinger);
    await push(s, ping, 'ping', {}, 'ping_after_heartbeats');
  },

  // /auth_socket: a signed token connects; user:ID only for that user; bad tokens never connect.
  async auth() {
    const s = connect('u42', '/auth_socket', { params: { token: O.token } });
    join(s, 'user:42');
    const other = join(s, 'user:43');
    const ping = join(s, 'ping');
    await joinResult(s, 'user:42');
    await joinResult(s, 'user:43');
    other.leave();
    await joinResult(s, 'ping');
    await push(s, ping, 'ping', {}, 'auth_ping');
    await Promise.all(Object.entries(O.bad_tokens || {}).map(([name, token]) => (
      neverOpens(name, '/auth_socket', { params: token === null ? {} : { token } })
    )));
  },

  // RecurringChannel pushes a fresh token every RECURRING_MS.
  async recurring() {
    const s = connect('u42', '/auth_socket', { params: { token: O.token } });
    join(s, 'recurring');
    await joinResult(s, 'recurring');
    await waitCount(pushCount(s, 'recurring', 'new_token'), O.pushes || 2, 5000);
  },

  // (tests._apps) request_ping broadcast -> PingChannel's handle_out -> send_ping.
  async send_ping() {
    const s = connect('a', '/socket');
    join(s, 'ping');
    await joinResult(s, 'ping');
    const c = connect('control', '/control_socket');
    const ctl = join(c, 'control:1');
    await joinResult(c, 'control:1');
    await push(c, ctl, 'broadcast', { topic: 'ping', event: 'request_ping', payload: { hello: 'world' } }, 'request_ping');
    await waitCount(pushCount(s, 'ping', 'send_ping'));
    await push(c, ctl, 'broadcast', { topic: 'ping', event: 'news', payload: { headline: 'extra' } }, 'news');
    await waitCount(pushCount(s, 'ping', 'news'));
  },

  // (tests._apps) "disconnect" broadcast to a socket id closes that user's connection.
  async disconnect() {
    const u42 = connect('u42', '/auth_socket', { params: { token: O.token42 } });
    const u43 = connect('u43', '/auth_socket', { params: { token: O.token43 } });
    join(u42, 'ping');
    const p43 = join(u43, 'ping');
    await joinResult(u42, 'ping');
    await joinResult(u43, 'ping');
    const c = connect('control', '/control_socket');
    const ctl = join(c, 'control:1');
    await joinResult(c, 'control:1');
    await push(c, ctl, 'broadcast', { topic: 'auth_socket:43', event: 'not_disconnect', payload: {} }, 'other_event');
    await push(u43, p43, 'ping', {}, 'u43_ping_after_other_event');
    await push(c, ctl, 'broadcast', { topic: 'auth_socket:42', event: 'disconnect', payload: {} }, 'disconnect');
    await waitCount({ ev: 'close', sock: 'u42' });
    // phoenix.js 1.8.16 reconnects after any close it did not start, and rejoins.
    await waitCount({ ev: 'open', sock: 'u42' }, 2);
    await joinResult(u42, 'ping', 2);
    await push(u43, p43, 'ping', {}, 'u43_ping_after_disconnect');
  },

  // (tests._apps) phoenix.js's authToken option (Sec-WebSocket-Protocol).
  async auth_token() {
    const s = connect('t7', '/token_socket', { authToken: O.token });
    join(s, 'whoami');
    await joinResult(s, 'whoami');
    await Promise.all([
      neverOpens('anonymous', '/token_socket', { topic: 'whoami' }),
      neverOpens('forged', '/token_socket', { topic: 'whoami', authToken: O.forged_token }),
    ]);
  },

  // (two nodes, O.ports) One LongPoll client's requests alternate between the
  // nodes; a second one too; pings and a broadcast reach both.
  async cluster() {
    const s = connect('a', '/socket');
    const ping = join(s, 'ping');
    await joinResult(s, 'ping');
    for (let i = 0; i < 6; i += 1) await push(s, ping, 'ping', { i }, `ping${i}`);
    const b = connect('b', '/socket');
    join(b, 'ping');
    await joinResult(b, 'ping');
    const replied = push(s, ping, 'broadcast', { body: 'hi' }, 'broadcast', 300);
    await waitCount(pushCount(s, 'ping', 'broadcast'));
    await waitCount(pushCount(b, 'ping', 'broadcast'));
    await replied;
    await push(b, b.channels[0], 'ping', {}, 'b_ping');
  },

  // (tests._deploy_app) Join O.topic (whoami) on O.path: the join reply says
  // what the server saw of the connection.
  async whoami() {
    const s = connect('a', O.path || '/info_socket');
    join(s, O.topic || 'whoami');
    await joinResult(s, O.topic || 'whoami');
  },

  // A server the client must fail to reach (e.g. an untrusted TLS certificate).
  async refused() {
    await neverOpens('a', O.path || '/socket', {});
  },
};

async function main() {
  const scenario = scenarios[scenarioName];
  if (!scenario) fail(`unknown scenario ${scenarioName}; known: ${Object.keys(scenarios).join(', ')}`);
  setTimeout(() => fail(`scenario ${scenarioName} still running after ${O.deadlineMs || 20000} ms`), O.deadlineMs || 20000);
  await scenario();
  emit({ ev: 'scenario_end' }); // what follows comes from the client's own disconnect
  for (const sock of sockets) sock.disconnect();
  emit({ ev: 'done' });
  process.exit(0);
}

main().catch(fail);
