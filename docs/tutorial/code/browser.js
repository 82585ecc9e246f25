// Step 1: phoenix.js in a browser page (index.html loads this module).
import { Socket } from "phoenix";

const socket = new Socket("ws://localhost:4000/socket");
socket.connect();

const channel = socket.channel("ping", {});
channel.join()
  .receive("ok", () => {
    console.log("joined ping");
    channel.push("ping", {})
      .receive("ok", (reply) => console.log("got", reply));
  })
  .receive("error", (reply) => console.log("join failed", reply));
