// Step 1: phoenix.js under Node.  Node 20 has no WebSocket of its own, so
// phoenix.js gets the `ws` package's as its transport.
const { Socket } = require("phoenix");

const socket = new Socket("ws://localhost:4000/socket", {
  transport: require("ws"),
});
socket.connect();

const channel = socket.channel("ping", {});
channel.join()
  .receive("ok", () => {
    console.log("joined ping");
    channel.push("ping", {})
      .receive("ok", (reply) => console.log("got", reply));
  })
  .receive("error", (reply) => console.log("join failed", reply));
