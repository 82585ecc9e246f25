'use strict';
// A long-running phoenix.js Presence client, driven by tests/test_presence_cluster.py.
//
//   node presence_client.js SOCKET_URL USER_ID [OPTIONS_JSON]
//
// SOCKET_URL is the socket's mount, e.g. ws://127.0.0.1:4000/socket (phoenix.js
// appends /websocket).  The client connects with params {user_id: USER_ID},
// joins the topic `tracked` (OPTIONS.topic) with the payload {user_id: USER_ID}
// (the demo's presence key), wires `new Presence(channel)` and
// prints one JSON object per line:
//
//   {"ev":"open"|"close"|"error", ...}         socket state (it reconnects by itself)
//   {"ev":"joined","join_ref":J}               each successful (re)join of the channel
//   {"ev":"join_error","response":R}           a refused join
//   {"ev":"join","key":K,"current":[refs]|null,"joined":[refs]}   Presence onJoin
//   {"ev":"leave","key":K,"current":[refs],"left":[refs]}          Presence onLeave
//   {"ev":"sync","n":N,"list":[{"id","count","refs","metas"}]}     Presence onSync; the
//        list is presence.list((id, {metas}) => ({id, count: metas.length, ...})) sorted by id
//   {"ev":"reply","event":E,"status":S,"response":R}               a reply to `push`
//   {"ev":"left","status":S}                   the channel left (the `leave` command)
//   {"ev":"exit","reason":R}                   just before exiting
//
// Commands, one per line on stdin:
//   leave              leave the channel (the others see this user's meta go)
//   join               join the topic again, with a new channel and Presence
//   push EVENT [JSON]  push an event on the channel and print its reply
//   exit               disconnect and exit 0 (so does the end of stdin)
//
// It exits by itself (code 3) after OPTIONS.lifetimeMs (default 60 000 ms).
//
// OPTIONS_JSON: {"lifetimeMs", "topic", "reconnectMs" (default 200), "rejoinMs" (default 200)}.

const { Socket, Presence } = require('phoenix');
const WebSocket = require('ws');
const readline = require('readline');

const [url, userId, rawOptions] = process.argv.slice(2);
if (!url || !userId) {
  process.stderr.write('usage: node presence_client.js SOCKET_URL USER_ID [OPTIONS_JSON]\n');
  process.exit(2);
}
const O = JSON.parse(rawOptions || '{}');
const TOPIC = O.topic || 'tracked';
const LIFETIME_MS = O.lifetimeMs || 60000;

function emit(ev) {
  process.stdout.write(JSON.stringify(ev) + '\n');
}

let exiting = false;
function exit(code, reason) {
  if (exiting) return;
  exiting = true;
  emit({ ev: 'exit', reason });
  // Give the close frame a moment to go out, but never wait on it for long.
  const hard = setTimeout(() => process.exit(code), 500);
  socket.disconnect(() => {
    clearTimeout(hard);
    process.exit(code);
  }, 1000, reason);
}

setTimeout(() => exit(3, 'lifetime'), LIFETIME_MS);

const refs = (presence) => (presence ? presence.metas.map((m) => m.phx_ref) : null);

const socket = new Socket(url, {
  transport: WebSocket,
  params: { user_id: userId },
  timeout: 5000,
  reconnectAfterMs: () => O.reconnectMs || 200,
  rejoinAfterMs: () => O.rejoinMs || 200,
});
socket.onOpen(() => emit({ ev: 'open' }));
socket.onClose((event) => emit({ ev: 'close', code: event && event.code }));
socket.onError((error) => {
  const message = error && (error.message || (error.error && error.error.message));
  emit({ ev: 'error', message: message || null });
});
socket.connect();

let channel = null;
let presence = null;
let syncs = 0;

function listing() {
  const list = presence.list((id, { metas }) => ({
    id,
    count: metas.length,
    refs: metas.map((m) => m.phx_ref),
    metas,
  }));
  return list.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function join() {
  channel = socket.channel(TOPIC, { user_id: userId });
  presence = new Presence(channel);
  presence.onJoin((key, current, joined) => emit({ ev: 'join', key, current: refs(current), joined: refs(joined) }));
  presence.onLeave((key, current, left) => emit({ ev: 'leave', key, current: refs(current), left: refs(left) }));
  presence.onSync(() => {
    syncs += 1;
    emit({ ev: 'sync', n: syncs, list: listing() });
  });
  const ch = channel;
  ch.join()
    .receive('ok', () => emit({ ev: 'joined', join_ref: ch.joinRef() }))
    .receive('error', (response) => emit({ ev: 'join_error', response }))
    .receive('timeout', () => emit({ ev: 'join_timeout' }));
}

join();

function command(line) {
  const words = line.trim().split(/\s+/);
  const name = words[0];
  if (name === '') return;
  if (name === 'leave') {
    channel.leave()
      .receive('ok', () => emit({ ev: 'left', status: 'ok' }))
      .receive('timeout', () => emit({ ev: 'left', status: 'timeout' }));
  } else if (name === 'join') {
    join();
  } else if (name === 'push') {
    const event = words[1];
    const rest = line.trim().slice(line.trim().indexOf(event) + event.length).trim();
    const payload = rest ? JSON.parse(rest) : {};
    const reply = (status) => (response) => emit({ ev: 'reply', event, status, response });
    channel.push(event, payload).receive('ok', reply('ok')).receive('error', reply('error')).receive('timeout', reply('timeout'));
  } else if (name === 'exit') {
    exit(0, 'exit');
  } else {
    emit({ ev: 'bad_command', line });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  try {
    command(line);
  } catch (e) {
    emit({ ev: 'bad_command', line, error: String(e) });
  }
});
rl.on('close', () => exit(0, 'stdin closed'));
