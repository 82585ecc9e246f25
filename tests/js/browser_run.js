'use strict';
// Opens a page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and prints, as JSON lines, what the page reports with
// console.log('PHX ' + JSON.stringify(event)); driven by tests/test_browser.py.
//
//   node browser_run.js PAGE_URL [OPTIONS_JSON]
//
// OPTIONS_JSON: {"chromium": path, "userDataDir": fresh directory,
// "deadlineMs": 30000}.  The run ends when the page reports {"ev":"done"}
// (exit 0) or {"ev":"fail"}, or at the deadline (exit 1).  Page errors and
// failed requests are printed as {"ev":"page_error"} / {"ev":"request_failed"}.

const { chromium } = require('playwright-core');

const [pageUrl, rawOptions] = process.argv.slice(2);
const O = JSON.parse(rawOptions || '{}');

function print(ev) {
  process.stdout.write(JSON.stringify(ev) + '\n');
}

async function main() {
  const context = await chromium.launchPersistentContext(O.userDataDir, {
    executablePath: O.chromium || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  let finished;
  const ended = new Promise((resolve) => { finished = resolve; });
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (message) => {
    const text = message.text();
    if (!text.startsWith('PHX ')) {
      print({ ev: 'console', type: message.type(), text });
      return;
    }
    const ev = JSON.parse(text.slice(4));
    print(ev);
    if (ev.ev === 'done') finished(0);
    if (ev.ev === 'fail') finished(1);
  });
  page.on('pageerror', (error) => print({ ev: 'page_error', message: String(error && error.stack || error) }));
  page.on('requestfailed', (request) => print({
    ev: 'request_failed', url: request.url(), method: request.method(), error: request.failure() && request.failure().errorText,
  }));
  page.on('request', (request) => print({ ev: 'http', method: request.method(), url: request.url() }));
  const timer = setTimeout(() => { print({ ev: 'deadline' }); finished(1); }, O.deadlineMs || 30000);
  await page.goto(pageUrl);
  const code = await ended;
  clearTimeout(timer);
  await context.close();
  process.exit(code);
}

main().catch((error) => {
  print({ ev: 'fail', reason: String(error && error.stack || error) });
  process.exit(1);
});
