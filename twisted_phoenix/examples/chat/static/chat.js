// The chat page: a phoenix.js Socket, one channel for the room, and
// phoenix.js's Presence for who is online.  Every text from the server is
// shown with textContent, never as HTML.
import { LongPoll, Presence, Socket } from "/phoenix/phoenix.mjs";

const ROOM = "room:lobby";
// "typing" goes back to false after this long without a keystroke...
const TYPING_IDLE_MS = 3000;
// ...and is said again at most this often while typing goes on (the server
// forgets it after 6 s without news).
const TYPING_REPEAT_MS = 2500;
const NAME_KEY = "twisted_phoenix.chat.name";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  joinForm: $("join-form"),
  name: $("name"),
  joinError: $("join-error"),
  room: $("room"),
  messages: $("messages"),
  typing: $("typing"),
  composer: $("composer"),
  body: $("body"),
  sendError: $("send-error"),
  online: $("online"),
  onlineCount: $("online-count"),
};

// "/socket": this page's own host and port (ws:// or wss:// as the page).
// "?transport=longpoll" in the page's address: phoenix.js's long-poll
// transport, as where WebSockets are blocked.
const transport = new URLSearchParams(window.location.search).get("transport");
const socket = new Socket("/socket", transport === "longpoll" ? { transport: LongPoll } : {});
let channel = null;
let presence = null;
let me = null;
let synced = false;
let typing = false;
let typingSentAt = 0;
let typingTimer = null;

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

socket.onOpen(() => {
  if (!channel || channel.state !== "joined") {
    setStatus("connected", me ? "Connected: joining…" : "Connected");
  }
});
socket.onClose(() => setStatus("offline", "Connection lost: reconnecting…"));
socket.connect();

// -- joining ----------------------------------------------------------------

try {
  ui.name.value = localStorage.getItem(NAME_KEY) || "";
} catch (_) { /* storage disabled */ }

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  if (name) join(name);
});

function join(name) {
  const button = ui.joinForm.querySelector("button");
  button.disabled = true;
  showError(ui.joinError, "");
  channel = socket.channel(ROOM, { name });
  presence = new Presence(channel);
  synced = false;
  presence.onJoin((who, current) => {
    if (synced && !current) addEvent(`${who} joined`);
  });
  presence.onLeave((who, current) => {
    if (synced && current.metas.length === 0) addEvent(`${who} left`);
  });
  presence.onSync(() => {
    synced = true;
    renderOnline();
  });
  channel.on("new_msg", addMessage);
  channel.onError(() => setStatus("offline", "Connection lost: reconnecting…"));

  // phoenix.js sends this join again after every reconnection: "ok" comes
  // back each time.
  channel.join()
    .receive("ok", (reply) => {
      me = reply.name;
      typing = false;
      try { localStorage.setItem(NAME_KEY, me); } catch (_) { /* storage disabled */ }
      setStatus("joined", `Joined as ${reply.name}, on node ${reply.node}`);
      if (ui.room.hidden) {
        ui.joinForm.hidden = true;
        ui.room.hidden = false;
        ui.body.focus();
      }
    })
    .receive("error", (reply) => {
      // Refused: stop phoenix.js from trying again, and let the user choose.
      channel.leave();
      channel = null;
      button.disabled = false;
      showError(ui.joinError, (reply && reply.reason) || "The server refused the name.");
      ui.name.focus();
    })
    .receive("timeout", () => setStatus("offline", "No answer from the server: retrying…"));
}

// -- messages ---------------------------------------------------------------

function scrolledToEnd(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function append(item) {
  const follow = scrolledToEnd(ui.messages);
  ui.messages.append(item);
  if (follow) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function addMessage({ name, body, at }) {
  const item = element("li", name === me ? "message mine" : "message");
  item.dataset.name = name;
  const head = element("p", "meta");
  head.append(element("span", "author", name), " ");
  const time = element("time", "", new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  time.dateTime = new Date(at).toISOString();
  head.append(time);
  item.append(head, element("p", "body", body));
  append(item);
}

function addEvent(text) {
  append(element("li", "event", text));
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const body = ui.body.value.trim();
  if (!body || !channel) return;
  ui.body.value = "";
  stopTyping(false); // sending ends typing on the server too
  showError(ui.sendError, "");
  const failed = (why) => {
    if (!ui.body.value) ui.body.value = body;
    showError(ui.sendError, why);
  };
  channel.push("new_msg", { body })
    .receive("error", (reply) => failed((reply && reply.reason) || "The message was refused."))
    .receive("timeout", () => failed("Not sent: no connection to the server."));
});

// -- typing -----------------------------------------------------------------

function stopTyping(tell = true) {
  clearTimeout(typingTimer);
  typingTimer = null;
  if (typing && tell && channel) channel.push("typing", { typing: false });
  typing = false;
}

ui.body.addEventListener("input", () => {
  if (!channel) return;
  if (!ui.body.value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (!typing || now - typingSentAt > TYPING_REPEAT_MS) {
    typing = true;
    typingSentAt = now;
    channel.push("typing", { typing: true });
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
});

// -- who is online ----------------------------------------------------------

function listing(names) {
  if (names.length < 2) return names.join("");
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

function renderOnline() {
  const people = presence.list((name, { metas }) => ({
    name,
    typing: metas.some((meta) => meta.typing),
    nodes: [...new Set(metas.map((meta) => meta.node))].sort(),
  }));
  people.sort((a, b) => a.name.localeCompare(b.name));
  ui.online.replaceChildren(...people.map((person) => {
    const item = element("li", person.typing ? "person typing" : "person");
    item.dataset.name = person.name;
    item.append(element("span", "person-name", person.name));
    if (person.name === me) item.append(" ", element("span", "you", "(you)"));
    if (person.typing) item.append(" ", element("span", "typing-note", "typing…"));
    item.append(element("span", "node", `on ${person.nodes.join(", ")}`));
    return item;
  }));
  ui.onlineCount.textContent = `(${people.length})`;
  const typists = people.filter((p) => p.typing && p.name !== me).map((p) => p.name);
  ui.typing.textContent = typists.length === 0 ? ""
    : `${listing(typists)} ${typists.length === 1 ? "is" : "are"} typing…`;
}
