// An authenticated phoenix.js client (Node): it keeps its token fresh
// (step 4) and shows who is in room:lobby (step 6).
//
//   node lobby.js SOCKET_URL TOKEN
const { Socket, Presence } = require("phoenix");

const [url, firstToken] = process.argv.slice(2);

// -- The token, kept fresh (step 4) --
let token = firstToken;
// params is a function: every (re)connection sends the latest token.
const socket = new Socket(url, {
  transport: require("ws"),
  params: () => ({ token }),
});
socket.connect();

const recurring = socket.channel("recurring", {});
recurring.on("new_token", (payload) => {
  token = payload.token;
  console.log("new token");
});
recurring.join();

// -- Who is online (step 6) --
const room = socket.channel("room:lobby", {});
const presence = new Presence(room);
presence.onSync(() => {
  const online = presence.list((id, { metas }) => {
    const nodes = metas.map((meta) => meta.node);
    return `${id} (${nodes.join(", ")})`;
  });
  console.log("online:", online.sort().join(", "));
});
room.join().receive("ok", ({ name }) => {
  console.log("joined room:lobby as", name);
});
