'use strict';
// Real headless Chromium pages of the chat example, driven by
// tests/test_chat_browser.py through playwright-core.
//
//   node chat_browser.js
//
// Chromium is Debian's (CHROMIUM, default /usr/bin/chromium), launched headless
// with a fresh profile in a temporary directory (under $TMPDIR, which the test
// points at a directory it removes).  Each page has a browser context of its
// own (its own storage, as a separate user).
//
// Commands, one JSON object per line on stdin, each with an "id"; each is
// answered {"ev":"done","id":ID,...} or {"ev":"failed","id":ID,"error":E,"state":S}:
//
//   {"cmd":"open","page":P,"url":U}           open the chat page U as page P
//   {"cmd":"join","page":P,"name":N}          choose the name N and join
//   {"cmd":"type","page":P,"text":T}          type T (key by key) in the message field
//   {"cmd":"send","page":P,"text":T}          type T and press Enter
//   {"cmd":"wait","page":P,"expect":X,"timeoutMs":MS}
//                                             wait until the page shows X (below); the
//                                             answer carries the page's state
//   {"cmd":"state","page":P}                  the page's state, now
//   {"cmd":"screenshot","page":P,"path":F}    a PNG of the page
//   {"cmd":"close","page":P}                  close the page (its tab, then its context)
//   {"cmd":"exit"}                            close the browser and exit 0
//
// The state of a page is what a user sees: {"status": data-state of #status,
// "statusText", "online": [names in the list, sorted], "typing": [names marked
// typing in the list, sorted], "typingLine": the line under the messages,
// "messages": [{"name","body"}], "events": ["bob joined", ...], "joinError"}.
// X holds any of: "status", "online", "typing" (each equal), "typingLine"
// (contained), "message" ({"name","body"} shown), "event" (a line shown),
// "joinError" (contained), "messageCount" (equal).
//
// Also printed: {"ev":"ready","version":V} once the browser runs,
// {"ev":"pageerror","page":P,"error":E} for an uncaught exception in a page,
// {"ev":"console","page":P,"type":T,"text":X} for console errors and warnings.

const fs = require('fs');
const readline = require('readline');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function emit(ev) {
  process.stdout.write(JSON.stringify(ev) + '\n');
}

// Runs in the page: what the user sees.
function pageState() {
  const all = (selector) => Array.from(document.querySelectorAll(selector));
  const text = (id) => {
    const node = document.getElementById(id);
    return node ? node.textContent : null;
  };
  const status = document.getElementById('status');
  return {
    status: status ? status.dataset.state : null,
    statusText: text('status'),
    online: all('#online li').map((li) => li.dataset.name).sort(),
    typing: all('#online li.typing').map((li) => li.dataset.name).sort(),
    typingLine: text('typing') || '',
    messages: all('#messages li.message').map((li) => ({
      name: li.dataset.name, body: li.querySelector('.body').textContent,
    })),
    events: all('#messages li.event').map((li) => li.textContent),
    joinError: text('join-error') || '',
  };
}

// Runs in the page: whether a state shows what `expect` asks for.
function shows(state, expect) {
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  if ('status' in expect && state.status !== expect.status) return false;
  if ('online' in expect && !same(state.online, [...expect.online].sort())) return false;
  if ('typing' in expect && !same(state.typing, [...expect.typing].sort())) return false;
  if ('typingLine' in expect && !state.typingLine.includes(expect.typingLine)) return false;
  if ('event' in expect && !state.events.includes(expect.event)) return false;
  if ('joinError' in expect && !state.joinError.includes(expect.joinError)) return false;
  if ('messageCount' in expect && state.messages.length !== expect.messageCount) return false;
  if ('message' in expect && !state.messages.some(
    (m) => m.name === expect.message.name && m.body === expect.message.body)) return false;
  return true;
}

const waitFor = new Function('expect', `${pageState}\n${shows}\n` +
  'const state = pageState(); return shows(state, expect) ? state : false;');

let browser = null;
const pages = new Map();

function pageOf(command) {
  const entry = pages.get(command.page);
  if (!entry) throw new Error(`no page ${command.page}`);
  return entry.page;
}

const handlers = {
  async open(command) {
    const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
    const page = await context.newPage();
    pages.set(command.page, { context, page });
    page.on('pageerror', (error) => emit({ ev: 'pageerror', page: command.page, error: String(error) }));
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') {
        emit({ ev: 'console', page: command.page, type: message.type(), text: message.text() });
      }
    });
    const response = await page.goto(command.url, { waitUntil: 'load', timeout: 15000 });
    return { status: response ? response.status() : null };
  },
  async join(command) {
    const page = pageOf(command);
    await page.getByRole('textbox', { name: 'Your name', exact: true }).fill(command.name, { timeout: 5000 });
    await page.getByRole('button', { name: 'Join' }).click({ timeout: 5000 });
    return {};
  },
  async type(command) {
    const page = pageOf(command);
    await page.getByRole('textbox', { name: 'Message', exact: true }).pressSequentially(command.text, { delay: 20, timeout: 10000 });
    return {};
  },
  async send(command) {
    const field = pageOf(command).getByRole('textbox', { name: 'Message', exact: true });
    await field.fill(command.text, { timeout: 5000 });
    await field.press('Enter', { timeout: 5000 });
    return {};
  },
  async wait(command) {
    const page = pageOf(command);
    const handle = await page.waitForFunction(waitFor, command.expect, {
      timeout: command.timeoutMs || 15000, polling: 50,
    });
    return { state: await handle.jsonValue() };
  },
  async state(command) {
    return { state: await pageOf(command).evaluate(pageState) };
  },
  async screenshot(command) {
    await pageOf(command).screenshot({ path: command.path, timeout: 10000 });
    return { bytes: fs.statSync(command.path).size };
  },
  async close(command) {
    const entry = pages.get(command.page);
    if (!entry) throw new Error(`no page ${command.page}`);
    pages.delete(command.page);
    await entry.page.close();
    await entry.context.close();
    return {};
  },
};

let exiting = false;
async function exit(code) {
  if (exiting) return;
  exiting = true;
  const hard = setTimeout(() => process.exit(code), 5000);
  try {
    if (browser) await browser.close();
  } catch (_) { /* the browser is gone already */ }
  clearTimeout(hard);
  process.exit(code);
}

async function handle(command) {
  if (command.cmd === 'exit') {
    emit({ ev: 'done', id: command.id });
    await exit(0);
    return;
  }
  const handler = handlers[command.cmd];
  try {
    if (!handler) throw new Error(`unknown command ${command.cmd}`);
    const result = await handler(command);
    emit({ ev: 'done', id: command.id, ...result });
  } catch (error) {
    let state = null;
    const entry = pages.get(command.page);
    if (entry) {
      try { state = await entry.page.evaluate(pageState); } catch (_) { /* closed */ }
    }
    emit({ ev: 'failed', id: command.id, error: String(error && error.message || error), state });
  }
}

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30000,
  });
  emit({ ev: 'ready', version: browser.version() });
  // Commands run one at a time, in order.
  let queue = Promise.resolve();
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    let command;
    try {
      command = JSON.parse(line);
    } catch (error) {
      emit({ ev: 'failed', id: null, error: `bad command: ${line}` });
      return;
    }
    queue = queue.then(() => handle(command));
  });
  lines.on('close', () => { queue.then(() => exit(0)); });
}

process.on('SIGTERM', () => exit(0));
process.on('SIGINT', () => exit(0));

main().catch((error) => {
  emit({ ev: 'failed', id: null, error: `cannot start Chromium: ${error && error.message || error}` });
  exit(1);
});
